"""The pytest plugin: the ``vram`` fixture, GPU-profile markers, budget checks, records,
report header and summary table. It knows no particular model."""
from __future__ import annotations

import traceback

import pytest

from . import options, record, report
from .backends import make_backend, resolve_backend_name
from .meter import Meter, PhaseOOM
from .profiles import PROFILES, GpuProfile, get_profile
from .sizes import format_bytes, parse_size


class VramSession:
    def __init__(self, config):
        try:
            self.backend = resolve_backend_name(options.get(config, "--vram-backend"))
            gpu = options.get(config, "--vram-gpu")
            self.default_profile = get_profile(gpu) if gpu else None
        except ValueError as exc:
            raise pytest.UsageError(str(exc)) from None
        self.json_path = options.get(config, "--vram-json")
        self.records: list[dict] = []
        self.gate = None
        compare_with = options.get(config, "--vram-compare")
        fail_exprs = options.get(config, "--vram-compare-fail")
        if fail_exprs and not compare_with:
            raise pytest.UsageError("--vram-compare-fail needs --vram-compare PATH|NNNN|latest")
        if compare_with:
            from .gate import Gate

            storage = config.getoption("benchmark_storage", None) if config.pluginmanager.hasplugin("benchmark") else None
            try:
                self.gate = Gate(compare_with, fail_exprs, storage)
            except ValueError as exc:  # a bad expression, or a HistoryError
                raise pytest.UsageError(f"--vram-compare: {exc}") from None

    def describe(self) -> dict:
        info = {"backend": self.backend, "libraries": record.library_versions()}
        if self.backend == "cuda":
            from .backends import CudaBackend

            info.update(CudaBackend.describe_device())
        if self.default_profile:
            info["gpu_profile"] = self.default_profile.name
        return info


STATE = pytest.StashKey[VramSession]()
METER = pytest.StashKey[Meter]()


def pytest_addoption(parser):
    options.add_to_pytest(parser)


def pytest_configure(config):
    for profile in PROFILES.values():
        config.addinivalue_line(
            "markers", f"{profile.name}: budget the test for a {profile.label} "
            f"({format_bytes(profile.total_bytes)}); select with -m {profile.name}")
    config.addinivalue_line(
        "markers", "vram_budget(limit): explicit memory budget, a size with its unit such as '12GiB' or '15 GB'")
    config.addinivalue_line(
        "markers", "expect_oom: the case is known not to fit its budget; it fails if it fits")
    config.stash[STATE] = VramSession(config)
    if config.pluginmanager.hasplugin("benchmark"):
        from . import benchmark_hooks

        config.pluginmanager.register(benchmark_hooks, "vram-benchmark")


def budget_for(item, default: GpuProfile | None) -> tuple[GpuProfile | None, int | None]:
    """The item's GPU profile (closest profile marker, else --vram-gpu) and budget in bytes."""
    profile = next((PROFILES[m.name] for m in item.iter_markers() if m.name in PROFILES), default)
    marker = item.get_closest_marker("vram_budget")
    if marker is not None:
        limit = marker.args[0] if marker.args else marker.kwargs.get("limit")
        return profile, parse_size(limit)
    return profile, profile.total_bytes if profile else None


def pytest_collection_modifyitems(config, items):
    for item in items:
        try:
            budget_for(item, None)
        except (ValueError, TypeError) as exc:
            raise pytest.UsageError(f"{item.nodeid}: vram_budget: {exc}") from None


def pytest_report_header(config):
    state = config.stash[STATE]
    line = f"vram: backend={state.backend}"
    if state.backend == "cuda":
        from .backends import CudaBackend

        device = CudaBackend.describe_device()
        line += f", GPU {device['gpu_name']} ({format_bytes(device['gpu_total_bytes'])})"
    if state.default_profile:
        p = state.default_profile
        line += f", emulating {p.name} ({format_bytes(p.total_bytes)} = {format_bytes(p.total_bytes, 'GB')})"
    return line


@pytest.fixture
def vram(request):
    """Measure GPU memory over named phases: ``with vram.phase("step"): ...``."""
    state = request.config.stash[STATE]
    profile, budget = budget_for(request.node, state.default_profile)
    backend = make_backend(state.backend, profile, budget)
    meter = Meter(backend, profile, budget)
    request.node.stash[METER] = meter
    backend.start()
    try:
        yield meter
    finally:
        backend.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    meter = item.stash.get(METER, None)
    if meter is None:
        return (yield)
    expect_oom = item.get_closest_marker("expect_oom") is not None
    oom = None
    try:
        result = yield
    except PhaseOOM as exc:
        oom = str(exc)
        traceback.clear_frames(exc.__traceback__)  # let the case's tensors go
        del exc
        meter._backend.release()
        result = None
    _record(item, meter, expect_oom)
    problem = verdict(item, meter, expect_oom, oom)
    if problem:
        item.add_report_section("call", "vram", problem)
        pytest.fail(problem, pytrace=False)
    return result


def case_name(item) -> str:
    callspec = getattr(item, "callspec", None)
    return callspec.id if callspec is not None else item.name


def verdict(item, meter: Meter, expect_oom: bool, oom: str | None) -> str | None:
    """The failure message for this case, or None when it behaved as expected."""
    case = case_name(item)
    if oom is not None:
        return None if expect_oom else f"{case}: {oom} (budget {_budget_text(meter)})"
    phase = max(meter.phases.values(), key=lambda p: p.total, default=None)
    if phase is None or meter.budget is None:
        return f"{case}: marked expect_oom but no budget applies" if expect_oom else None
    over = phase.total - meter.budget
    if over > 0 and not expect_oom:
        return (f"{case}: phase {phase.name!r} peaked at {format_bytes(phase.total)} "
                f"({phase.total} bytes), over the budget of {_budget_text(meter)} "
                f"by {format_bytes(over)} ({over} bytes)")
    if over <= 0 and expect_oom:
        return (f"{case}: expected OOM, peaked at {format_bytes(phase.total)} of "
                f"{_budget_text(meter)} (phase {phase.name!r})")
    return None


def _budget_text(meter: Meter) -> str:
    name = f" ({meter.gpu})" if meter.gpu and meter.profile.total_bytes == meter.budget else ""
    return f"{format_bytes(meter.budget)}{name}" if meter.budget is not None else "none"


def _record(item, meter: Meter, expect_oom: bool) -> None:
    callspec = getattr(item, "callspec", None)
    params = dict(callspec.params) if callspec is not None else {}
    rec = record.make_record(case_name(item), item.nodeid, meter, params, expect_oom)
    item.config.stash[STATE].records.append(rec)
    item.user_properties.append(("vram", rec))
    benchmark = getattr(item, "funcargs", {}).get("benchmark")
    if benchmark is not None:
        benchmark.extra_info["vram"] = rec  # mutate extra_info: pytest-benchmark keeps it by reference


def pytest_terminal_summary(terminalreporter, config):
    state = config.stash.get(STATE, None)
    if state and state.records:
        terminalreporter.write_sep("=", f"GPU memory ({state.backend} backend)")
        terminalreporter.write_line(report.table(state.records))
    if state and state.gate and state.gate.comparison:
        terminalreporter.write_sep("=", "GPU memory compared")
        terminalreporter.write_line(state.gate.summary())


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session):
    state = session.config.stash.get(STATE, None)
    if state and state.records:
        machine = state.describe()
        if state.json_path:
            record.write_json_atomic(state.json_path, record.vram_json(state.records, machine))
        if state.gate:
            state.gate.run(state.records, machine)
            if state.gate.regressions and session.exitstatus == pytest.ExitCode.OK:
                session.exitstatus = pytest.ExitCode.TESTS_FAILED
