"""The pytest plugin: the ``vram`` fixture, GPU-profile markers, budget checks, records,
report header and summary table; xdist workers pinned to GPUs, isolated cases, shards. It
knows no particular model. Where things are decided: the budget in :mod:`.budget`, options in
:mod:`.settings`, the session's records and files in :mod:`.session`, pytest-benchmark in
:mod:`.benchmark_bridge`, a project's extensions in :mod:`.hookspec`."""
from __future__ import annotations

import gc
import os
import traceback

import pytest

from . import benchmark_bridge, busy, hookspec, isolate, options, record, report, workers
from .backends import make_backend, resolve_backend_name
from .budget import Budget, budget_for, verdict
from .meter import Meter, PhaseOOM
from .profiles import NODES, with_project_profiles
from .session import VramSession
from .settings import Settings
from .sizes import format_bytes

STATE = pytest.StashKey[VramSession]()
METER = pytest.StashKey[Meter]()
FROZE = pytest.StashKey[bool]()


def pytest_addhooks(pluginmanager):
    pluginmanager.add_hookspecs(hookspec)


def pytest_addoption(parser):
    options.add_to_pytest(parser)


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config, parser, args):
    """Pin an xdist worker to its GPU before any conftest or library can start CUDA."""
    workers.pin(os.environ)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config):
    try:
        backend = resolve_backend_name(options.raw(config, options.find("--vram-backend")))
    except ValueError:
        return None  # pytest_configure says what is wrong with it
    return workers.auto_workers(backend, os.environ)


def pytest_configure(config):
    try:
        profiles = with_project_profiles([p for ps in config.hook.pytest_vram_gpu_profiles() for p in ps])
        settings = Settings.from_config(config, profiles)
        backend = resolve_backend_name(settings.backend)
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None
    for profile in profiles.values():
        config.addinivalue_line(
            "markers", f"{profile.name}: budget the test for a {profile.label} "
            f"({format_bytes(profile.total_bytes)}); select with -m {profile.name}")
    for node in NODES.values():
        config.addinivalue_line(
            "markers", f"{node.name}: budget each rank for one of a node's {node.label} "
            f"({format_bytes(node.profile.total_bytes)} per rank); select with -m {node.name}")
    config.addinivalue_line(
        "markers", "vram_budget(limit): explicit memory budget, a size with its unit such as '12GiB' or '15 GB'")
    config.addinivalue_line(
        "markers", "expect_oom: the case is known not to fit its budget; it fails if it fits")
    libraries = [name for names in config.hook.pytest_vram_libraries() for name in names]
    state = VramSession(settings, backend, profiles, libraries)
    config.stash[STATE] = state
    config.pluginmanager.register(state, "vram-session")  # gathers the records
    if settings.isolated_child:
        config.pluginmanager.register(isolate.ChildReportWriter(config, settings.isolated_child), "vram-child")
    if benchmark_bridge.installed(config):
        config.pluginmanager.register(benchmark_bridge.MachineInfo(state.describe), "vram-benchmark")
    if settings.compare and not settings.isolated_child:
        state.gate = make_gate(config, settings)
    if backend == "cuda" and not workers.distributing(config):
        busy.check_busy(config, settings.busy, settings.busy_limit)


def make_gate(config, settings: Settings):
    from .gate import Gate

    try:
        return Gate(settings.compare, list(settings.compare_fail), benchmark_bridge.storage_option(config))
    except ValueError as exc:  # a bad expression, no such run, or a HistoryError
        raise pytest.UsageError(f"--vram-compare: {exc}") from None


@pytest.hookimpl(trylast=True)  # after -m and -k have deselected
def pytest_collection_modifyitems(config, items):
    state = config.stash[STATE]
    for item in items:
        try:
            budget_for(item, None, state.profiles)
        except (ValueError, TypeError) as exc:
            raise pytest.UsageError(f"{item.nodeid}: {exc}") from None
    state.order = [item.nodeid for item in items]
    if state.settings.shard:
        items[:], dropped = state.settings.shard.select(items)
        config.hook.pytest_deselected(items=dropped)


def pytest_collection_finish(session):
    """Move the heap that imports and collection built (torch, the model libraries, the items)
    into the collector's permanent generation (``gc.freeze``): Python's full collections, which
    the tests' allocations trigger, then stop traversing it on every run. Only reference cycles
    made before this point go uncollected. Not when a heap is already frozen (an outer session
    running this one in process, as pytester does); undone at the session's end."""
    if gc.get_freeze_count() == 0:
        gc.freeze()
        session.config.stash[FROZE] = True


def pytest_report_header(config):
    state = config.stash[STATE]
    lines = [_device_line(state)]
    if state.settings.shard:
        lines.append(f"vram: shard {state.settings.shard} (every {state.settings.shard.count}th selected test)")
    if state.settings.isolate and not state.settings.isolated_child:
        lines.append("vram: --vram-isolate: each case runs in a fresh spawned process")
    if workers.distributing(config):
        if benchmark_bridge.installed(config):
            lines.append(f"vram: {benchmark_bridge.XDIST_NOTICE}")
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
    if state.settings.gpu:
        p = state.settings.gpu
        line += f", emulating {p.name} ({format_bytes(p.total_bytes)} = {format_bytes(p.total_bytes, 'GB')})"
    return line


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item, nextitem):
    """--vram-isolate: run a case in its own process and replay its reports here."""
    state = item.config.stash[STATE]
    isolating = state.settings.isolate and not state.settings.isolated_child
    if not isolating or "vram" not in getattr(item, "fixturenames", ()):
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
    budget = budget_for(request.node, state.settings.gpu, state.profiles)
    backend = make_backend(state.backend, budget.profile, budget.limit)
    meter = Meter(backend, budget.profile, budget.limit)
    request.node.stash[METER] = meter
    meter.baseline_bytes = state.baseline_bytes(backend)
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
    except (Exception, pytest.fail.Exception):
        _record(item, meter, expect_oom)  # a test failing outside a phase keeps its record
        raise
    _record(item, meter, expect_oom)
    problem = verdict(case_name(item), Budget(meter.profile, meter.budget), meter.phases, oom, expect_oom)
    if problem:
        item.add_report_section("call", "vram", problem)
        pytest.fail(problem, pytrace=False)
    return result


def case_name(item) -> str:
    """The case's display name: its parametrize id (the suite's short ids), else the test's name.
    Its identity is the full node id, the record's ``test``."""
    callspec = getattr(item, "callspec", None)
    return callspec.id if callspec is not None else item.name


def _record(item, meter: Meter, expect_oom: bool) -> None:
    params = record.stable_params(getattr(item, "callspec", None))
    rec = record.make_record(case_name(item), item.nodeid, meter, params, expect_oom)
    item.user_properties.append(("vram", rec))  # pytest_runtest_logreport gathers it
    benchmark_bridge.store_record(item, rec)


def pytest_terminal_summary(terminalreporter, config):
    state = config.stash.get(STATE, None)
    if state and state.records:
        terminalreporter.write_sep("=", f"GPU memory ({state.backend} backend)")
        terminalreporter.write_line(report.table(state.ordered_records(), breakdown=state.settings.breakdown))
    for note in state.notes if state else ():
        terminalreporter.write_line(f"vram: {note}")
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
    if config.stash.get(FROZE, False):
        gc.unfreeze()
    state = config.stash.get(STATE, None)
    if state and not workers.is_controller(config):
        config.workeroutput["vram"] = {"machine": state.describe(), "order": state.order}
    elif state:
        state.finish(session)
