"""Scale and isolation, as a user sees them through pytester: xdist workers pinned to GPUs with
their records merged, --vram-isolate surviving a crash, a clean start after an OOM, shards and
``pytest-vram merge``."""
import json
import os
from fnmatch import fnmatch

import pytest

from helpers import history, preload_simulator_shimmed_libraries, rec

from pytest_vram import workers
from pytest_vram.busy import busy_problem
from pytest_vram.cli import main as cli
from pytest_vram.shard import Shard, parse_shard

pytest_plugins = ["pytester"]
preload_simulator_shimmed_libraries()
MiB = 2**20

CASES = """
import os, torch, pytest

@pytest.mark.parametrize("mib", [1, 2, 3, 4, 5])
@pytest.mark.v100
def test_case(vram, mib):
    with vram.phase("creation"):
        kept = torch.zeros(mib * 2**20 // 4)
    with vram.phase("step"):
        tmp = kept * 2
"""


def run(pytester, *args, subprocess=False):
    args = ("-p", "no:cacheprovider", "-p", "no:randomly", *args)
    return pytester.runpytest_subprocess(*args) if subprocess else pytester.runpytest(*args)


def doc(path):
    return json.loads(path.read_text())


# -- xdist ---------------------------------------------------------------------------------
@pytest.mark.slow  # subprocesses
def test_each_xdist_worker_is_pinned_to_its_own_gpu(pytester, monkeypatch):
    pytester.makepyfile(test_pin="""
        import os, pytest
        @pytest.mark.parametrize("i", range(4))
        def test_where(i, worker_id):
            path = f"seen-{worker_id}.txt"
            open(path, "w").write(os.environ["CUDA_VISIBLE_DEVICES"])
    """)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "7,9")
    run(pytester, "-n", "2", subprocess=True).assert_outcomes(passed=4)
    seen = {p.stem.removeprefix("seen-"): p.read_text() for p in pytester.path.glob("seen-*.txt")}
    assert seen == {"gw0": "7", "gw1": "9"}


def test_pin_chooses_by_worker_number_and_only_once():
    env = {"PYTEST_XDIST_WORKER": "gw3", "CUDA_VISIBLE_DEVICES": "0,1"}
    assert workers.pin(env, lambda: pytest.fail("the variable was set")) == "1"
    assert workers.pin(env, lambda: 2) == "1" and env["CUDA_VISIBLE_DEVICES"] == "1"
    unset = {"PYTEST_XDIST_WORKER": "gw2"}
    assert workers.pin(unset, lambda: 4) == "2"
    assert workers.pin({"PYTEST_XDIST_WORKER": "gw0"}, lambda: 0) is None  # no GPU: nothing pinned
    assert workers.pin({"CUDA_VISIBLE_DEVICES": "5"}, lambda: 8) is None  # not a worker


def test_auto_starts_one_worker_per_visible_gpu_with_cuda_only():
    assert workers.auto_workers("cuda", {"CUDA_VISIBLE_DEVICES": "0,2,3"}) == 3
    assert workers.auto_workers("sim", {"CUDA_VISIBLE_DEVICES": "0,2,3"}) is None  # xdist: per core
    assert workers.auto_workers("cuda", {"CUDA_VISIBLE_DEVICES": "0,1", "PYTEST_XDIST_AUTO_NUM_WORKERS": "5"}) is None


@pytest.mark.slow  # subprocesses
def test_xdist_records_equal_a_serial_run(pytester):
    pytester.makepyfile(test_cases=CASES)
    run(pytester, "--vram-backend=sim", "--vram-json=serial.json").assert_outcomes(passed=5)
    result = run(pytester, "--vram-backend=sim", "--vram-json=par.json", "-n", "2", subprocess=True)
    result.assert_outcomes(passed=5)
    serial, par = doc(pytester.path / "serial.json"), doc(pytester.path / "par.json")
    assert par["records"] == serial["records"] and len(par["records"]) == 5
    assert par["order"] == serial["order"]
    assert sorted(par["machine_info"]["xdist_workers"]) == ["gw0", "gw1"]
    result.stdout.fnmatch_lines(["*GPU memory (sim backend)*", "1 *fits", "*", "*", "*", "5 *fits"])
    assert result.stdout.str().count("pytest-benchmark turns itself off under xdist") == 1


# -- isolation -----------------------------------------------------------------------------
CRASHING = """
import os, sys, torch, pytest

def test_before(vram):
    with vram.phase("creation"):
        kept = torch.zeros(2**18)

def test_crash(vram):
    with vram.phase("creation"):
        kept = torch.zeros(2**18)
        print("about to abort", flush=True)
        os.abort()

def test_after(vram):
    with vram.phase("creation"):
        kept = torch.zeros(2**18)

def test_not_a_case():
    assert os.getpid() == int(os.environ["PARENT_PID"])
"""


@pytest.mark.slow  # subprocesses
def test_isolated_crash_fails_only_its_case_with_its_output(pytester, monkeypatch):
    pytester.makepyfile(test_crash=CRASHING)
    monkeypatch.setenv("PARENT_PID", str(os.getpid()))
    result = run(pytester, "--vram-backend=cpu", "--vram-isolate", "--vram-json=v.json", "-rf")
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines([
        "*test_crash.py::test_crash: the isolated process was killed by SIGABRT (6) during call*",
        "*isolated process output*", "*about to abort*",
    ])
    cases = [r["case"] for r in doc(pytester.path / "v.json")["records"]]
    assert cases == ["test_before", "test_after"]


@pytest.mark.slow  # subprocesses
def test_isolated_record_equals_the_in_process_record(pytester):
    pytester.makepyfile(test_cases=CASES)
    run(pytester, "--vram-backend=sim", "--vram-json=a.json", "-k", "3").assert_outcomes(passed=1)
    result = run(pytester, "--vram-backend=sim", "--vram-json=b.json", "-k", "3", "--vram-isolate")
    result.assert_outcomes(passed=1)
    assert doc(pytester.path / "b.json")["records"] == doc(pytester.path / "a.json")["records"]


@pytest.mark.slow  # subprocesses
def test_isolated_child_that_runs_nothing_is_a_failure(pytester):
    pytester.makepyfile(test_exit="""
        import os
        def test_exit(vram):
            os._exit(3)
    """)
    result = run(pytester, "--vram-backend=cpu", "--vram-isolate")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*test_exit.py::test_exit: the isolated process exited with status 3 during call;*"])
    assert "internal error" not in result.stdout.str()  # the test ended the process, not pytest


# -- a clean start after an OOM ------------------------------------------------------------
AFTER_OOM = """
import torch, pytest

def test_a_first(vram):
    with vram.phase("creation"):
        kept = torch.zeros(2**18)

@pytest.mark.vram_budget("64MiB")
def test_b_oom(vram):
    with vram.phase("creation"):
        weights = [torch.zeros(2**20) for _ in range(4)]   # 16 MiB, alive at the OOM
    with vram.phase("step"):
        grow = [torch.zeros(2**20) for _ in range(64)]    # the sim runs out; cpu is told to
        raise torch.OutOfMemoryError("CUDA out of memory (injected)")

def test_c_next(vram):
    with vram.phase("creation"):
        kept = torch.zeros(2**18)
"""


@pytest.mark.parametrize("backend", ["cpu", "sim"])
def test_after_an_oom_the_next_case_starts_clean(pytester, backend):
    pytester.makepyfile(test_oom=AFTER_OOM)
    result = run(pytester, f"--vram-backend={backend}", "--vram-json=v.json")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*test_b_oom: out of memory in phase 'step'*"])
    first, oom, nxt = doc(pytester.path / "v.json")["records"]
    assert oom["status"] == "OOM" and oom["phases"]["step"]["peak"] >= 16 * MiB
    assert abs(nxt["baseline_bytes"] - first["baseline_bytes"]) <= MiB
    assert nxt["phases"]["creation"]["allocated"] == first["phases"]["creation"]["allocated"]


# -- shards and merge ----------------------------------------------------------------------
def test_shards_are_disjoint_cover_and_merge_to_the_serial_run(pytester):
    pytester.makepyfile(test_cases=CASES)
    run(pytester, "--vram-backend=sim", "--vram-json=serial.json").assert_outcomes(passed=5)
    run(pytester, "--vram-backend=sim", "--vram-json=s1.json", "--vram-shard=1/2").assert_outcomes(passed=3, deselected=2)
    run(pytester, "--vram-backend=sim", "--vram-json=s2.json", "--vram-shard=2/2").assert_outcomes(passed=2, deselected=3)
    os.chdir(pytester.path)
    assert cli(["merge", "s2.json", "s1.json", "-o", "merged.json"]) == 0
    merged, serial = doc(pytester.path / "merged.json"), doc(pytester.path / "serial.json")
    assert merged["records"] == serial["records"]
    assert merged["machine_info"]["merged_from"] == ["s2.json", "s1.json"]


def test_shard_selection_is_round_robin_in_collection_order():
    kept, dropped = parse_shard("2/3").select(list("abcdefg"))
    assert kept == ["b", "e"] and dropped == ["a", "c", "d", "f", "g"]
    assert parse_shard(" 1 / 1 ") == Shard(1, 1)


@pytest.mark.parametrize("bad", ["0/2", "3/2", "1", "a/b", "1/0"])
def test_malformed_shard_is_one_usage_error(pytester, bad):
    pytester.makepyfile(test_cases=CASES)
    result = run(pytester, f"--vram-shard={bad}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*--vram-shard: malformed shard '{bad}': expected I/N with 1 <= I <= N*"])


def _history(path, cases, backend="sim"):
    return str(history(path, [rec(c, 1) for c in cases], {"backend": backend}))


@pytest.mark.parametrize("second, message", [
    (lambda p: _history(p, ["b", "a"]), "case 'a' is in both *a.json and *b.json; shards must not overlap"),
    (lambda p: _history(p, ["b"], backend="cuda"), "*measured differently: backend 'sim' vs 'cuda'"),
    (lambda p: p.write_text('{"format": "pytest-vram", "vers') and str(p), "*not valid JSON (truncated or corrupt?)*"),
])
def test_merge_refuses_overlapping_foreign_or_corrupt_inputs(tmp_path, capsys, second, message):
    first = _history(tmp_path / "a.json", ["a"])
    out = tmp_path / "out.json"
    assert cli(["merge", first, second(tmp_path / "b.json"), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert fnmatch(err.strip(), f"pytest-vram: error: {message}"), err
    assert not out.exists()


# -- a GPU that is already busy ------------------------------------------------------------
def test_busy_gpu_is_reported_over_the_limit_only():
    assert busy_problem(None, 0) is None  # no NVML: nothing to say
    assert busy_problem(512 * MiB, 512 * MiB) is None
    message = busy_problem(3 * 2**30, 512 * MiB)
    assert "3.000 GiB (3221225472 bytes) of other processes' memory" in message
    assert "--vram-busy-limit=0.500 GiB" in message


@pytest.mark.parametrize("args, message", [
    (["--vram-busy=panic"], "--vram-busy: unknown action 'panic'; valid choices: warn, refuse, ignore"),
    (["--vram-busy-limit=lots"], "malformed size 'lots'*"),
])
def test_bad_busy_options_get_one_clear_error(pytester, args, message):
    pytester.makepyfile(test_cases=CASES)
    result = run(pytester, *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{message}*"])


class _Proc:
    def __init__(self, pid, used):
        self.pid, self.usedGpuMemory = pid, used


def _fake_nvml(procs, used_total):
    import types

    fake = types.SimpleNamespace(
        nvmlInit=lambda: None,
        nvmlDeviceGetHandleByUUID=lambda uuid: "handle",
        nvmlDeviceGetHandleByIndex=lambda index: "handle",
        nvmlDeviceGetComputeRunningProcesses=lambda handle: procs,
        nvmlDeviceGetGraphicsRunningProcesses=lambda handle: [],
        nvmlDeviceGetMemoryInfo=lambda handle: types.SimpleNamespace(used=used_total))
    return fake


@pytest.mark.parametrize("procs, used_total, foreign", [
    ([_Proc(1, 100), _Proc(2, 3 * MiB), _Proc(3, 5 * MiB)], 0, 8 * MiB),   # NVML names them
    ([_Proc(1, 100), _Proc(2, None)], 9 * MiB, 9 * MiB - 100),              # it cannot: used less ours
])
def test_other_processes_memory_is_read_from_nvml(monkeypatch, procs, used_total, foreign):
    import sys

    from pytest_vram import nvml

    monkeypatch.setitem(sys.modules, "pynvml", _fake_nvml(procs, used_total))
    assert nvml.foreign_used_bytes(0, pid=1) == foreign


def test_isolated_child_gets_the_parents_plugin_ini_and_warning_options_only():
    from pytest_vram.isolate import carried_args

    args = ["-p", "no:x", "-q", "-pfoo", "-o", "a=1", "--import-mode=importlib", "-k", "p",
            "--confcutdir", "d", "tests", "-W", "error"]
    assert carried_args(args) == ["-p", "no:x", "-pfoo", "-o", "a=1", "--import-mode=importlib",
                                  "--confcutdir", "d", "-W", "error"]
