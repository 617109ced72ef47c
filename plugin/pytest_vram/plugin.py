"""The pytest plugin: the ``vram`` fixture, GPU-profile markers, budget checks, records,
report header and summary table; xdist workers pinned to GPUs, isolated cases, shards. It
knows no particular model."""
from __future__ import annotations

import gc
import os
import traceback

import pytest

from . import history, isolate, options, record, report, workers
from .backends import make_backend, resolve_backend_name
from .meter import Meter, PhaseOOM
from .profiles import PROFILES, GpuProfile
from .session import VramSession
from .sizes import format_bytes, parse_size


STATE = pytest.StashKey[VramSession]()
METER = pytest.StashKey[Meter]()


def pytest_addoption(parser):
    options.add_to_pytest(parser)


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config, parser, args):
    """Pin an xdist worker to its GPU before any conftest or library can start CUDA."""
    workers.pin(os.environ)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config):
    try:
        backend = resolve_backend_name(options.get(config, "--vram-backend"))
    except ValueError:
        return None  # pytest_configure says what is wrong with it
    return workers.auto_workers(backend, os.environ)


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
    config.pluginmanager.register(config.stash[STATE], "vram-session")  # gathers the records
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


@pytest.hookimpl(trylast=True)  # after -m and -k have deselected
def pytest_collection_modifyitems(config, items):
    for item in items:
        try:
            budget_for(item, None)
        except (ValueError, TypeError) as exc:
            raise pytest.UsageError(f"{item.nodeid}: vram_budget: {exc}") from None
    state = config.stash[STATE]
    state.order = [item.nodeid for item in items]
    if state.shard:
        items[:], dropped = state.shard.select(items)
        config.hook.pytest_deselected(items=dropped)


def pytest_report_header(config):
    state = config.stash[STATE]
    lines = [_device_line(state)]
    if state.shard:
        lines.append(f"vram: shard {state.shard} (every {state.shard.count}th selected test)")
    if state.isolate:
        lines.append("vram: --vram-isolate: each case runs in a fresh spawned process")
    if workers.distributing(config):
        if config.pluginmanager.hasplugin("benchmark"):
            lines.append(f"vram: {workers.BENCHMARK_OFF}")
        sharing = workers.sharing_warning(state.backend, len(config.getoption("tx")), os.environ)
        if sharing:
            lines.append(f"vram: WARNING {sharing}")
    return lines


def _device_line(state) -> str:
    line = f"vram: backend={state.backend}"
    if state.backend == "cuda":
        from .backends import CudaBackend

        device = CudaBackend.describe_device()
        line += f", GPU {device['gpu_name']} ({format_bytes(device['gpu_total_bytes'])})"
    if state.default_profile:
        p = state.default_profile
        line += f", emulating {p.name} ({format_bytes(p.total_bytes)} = {format_bytes(p.total_bytes, 'GB')})"
    return line


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item, nextitem):
    """--vram-isolate: run a case in its own process and replay its reports here."""
    state = item.config.stash[STATE]
    if not state.isolate or "vram" not in getattr(item, "fixturenames", ()):
        return None
    item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    for rep in isolate.run_item(item, state.child_args()):
        item.ihook.pytest_runtest_logreport(report=rep)
    item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
    return True


@pytest.fixture
def vram(request):
    """Measure GPU memory over named phases: ``with vram.phase("step"): ...``."""
    state = request.config.stash[STATE]
    profile, budget = budget_for(request.node, state.default_profile)
    backend = make_backend(state.backend, profile, budget)
    meter = Meter(backend, profile, budget)
    request.node.stash[METER] = meter
    gc.collect()
    meter.baseline_bytes = backend.held_bytes(state.leftovers)
    backend.start()
    try:
        yield meter
    finally:
        backend.stop()
        state.leftovers.keep(backend.tracker)


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
    item.user_properties.append(("vram", rec))  # pytest_runtest_logreport gathers it
    benchmark = getattr(item, "funcargs", {}).get("benchmark")
    if benchmark is not None:
        benchmark.extra_info["vram"] = rec  # mutate extra_info: pytest-benchmark keeps it by reference


def pytest_terminal_summary(terminalreporter, config):
    state = config.stash.get(STATE, None)
    if state and state.records:
        terminalreporter.write_sep("=", f"GPU memory ({state.backend} backend)")
        terminalreporter.write_line(report.table(state.ordered_records()))
    if state and state.gate and state.gate.comparison:
        terminalreporter.write_sep("=", "GPU memory compared")
        terminalreporter.write_line(state.gate.summary())


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    """xdist controller: keep what each worker said of its device (and its selection's order)."""
    state = node.config.stash[STATE]
    out = getattr(node, "workeroutput", {}).get("vram")
    if out:
        state.workers[node.gateway.id] = out["machine"]
        state.order = state.order or out["order"]


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session):
    config = session.config
    state = config.stash.get(STATE, None)
    if state and not workers.is_controller(config):
        config.workeroutput["vram"] = {"machine": state.describe(), "order": state.order}
        return
    if state and state.records:
        machine = state.describe()
        records = state.ordered_records()
        if state.json_path:
            history.write_json_atomic(state.json_path, history.vram_json(records, machine, state.order))
        if state.gate:
            state.gate.run(records, machine)
            if state.gate.regressions and session.exitstatus == pytest.ExitCode.OK:
                session.exitstatus = pytest.ExitCode.TESTS_FAILED
