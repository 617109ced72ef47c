"""What a project plugs into pytest-vram without editing it (hooks), the pytest-benchmark bridge
(saved runs found through its storage API), settings parsed once, --vram-breakdown, and the
fixture's cost when nothing leaks."""
import json
import types

import pytest

from pytest_vram import benchmark_bridge, options, settings
from pytest_vram.session import VramSession

pytest_plugins = ["pytester"]

PROJECT_CONFTEST = """
from pytest_vram.profiles import GpuProfile

def pytest_vram_gpu_profiles():
    return [GpuProfile("lab_l4", "lab NVIDIA L4 24 GB", 23_034_200_064, (8, 9), True, "a test's figure")]

def pytest_vram_libraries():
    return ["pluggy"]
"""


def run(pytester, *args):
    return pytester.runpytest("-p", "no:cacheprovider", "--vram-backend=cpu", *args)


def test_a_project_adds_gpu_profiles_and_libraries_through_hooks(pytester):
    pytester.makeconftest(PROJECT_CONFTEST)
    pytester.makepyfile(test_l4="""
        import pytest
        @pytest.mark.lab_l4
        def test_marked(vram, benchmark):
            assert vram.gpu == "lab_l4" and vram.budget == 23_034_200_064
            benchmark.pedantic(lambda: None, rounds=1, iterations=1)
        def test_default(vram):
            assert vram.gpu == "lab_l4"
        @pytest.mark.t4
        def test_other(vram):
            pass
    """)
    result = run(pytester, "--vram-gpu=lab_l4", "-m", "lab_l4 or not t4", "--vram-json=v.json", "--benchmark-json=b.json")
    result.assert_outcomes(passed=2, deselected=1)
    result.stdout.fnmatch_lines(["vram: backend=cpu, emulating lab_l4 (21.452 GiB = 23.034 GB)"])
    machine = json.loads((pytester.path / "v.json").read_text())["machine_info"]
    assert machine["libraries"]["pluggy"] and machine["libraries"]["torch"]
    assert "transformers" not in machine["libraries"]  # the suite's, not the plugin's
    bench_machine = json.loads((pytester.path / "b.json").read_text())["machine_info"]["vram"]
    assert bench_machine["libraries"] == machine["libraries"]
    markers = run(pytester, "--markers")
    markers.stdout.fnmatch_lines(["@pytest.mark.lab_l4: budget the test for a lab NVIDIA L4 24 GB (21.452 GiB)*"])


@pytest.mark.parametrize("profiles, message", [
    ('[GpuProfile("v100", "again", 1, (7, 0), False, "x")]', "a GPU profile named 'v100' exists already*"),
    ('["l4"]', "pytest_vram_gpu_profiles: expected GpuProfile entries, got 'l4'"),
])
def test_a_bad_project_profile_is_one_usage_error(pytester, profiles, message):
    pytester.makeconftest("from pytest_vram.profiles import GpuProfile\n"
                          f"def pytest_vram_gpu_profiles():\n    return {profiles}\n")
    pytester.makepyfile(test_x="def test_x(vram):\n    pass\n")
    result = run(pytester)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: *{message}"])


def _save_run(storage, number, name, peak):
    rec = {"case": f"case-{name}", "test": f"t.py::{name}", "status": "fits",
           "phases": {"step": {"allocated": 1, "peak": peak, "reserved": None, "context": 0,
                               "total": peak, "breakdown": {}, "oom": False}}}
    folder = storage / "Linux-CPython-3.11-64bit"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{number}_{name}.json").write_text(json.dumps(
        {"machine_info": {"vram": {"backend": "cpu"}}, "benchmarks": [{"extra_info": {"vram": rec}}]}))
    return folder / f"{number}_{name}.json"


def test_saved_runs_are_found_through_pytest_benchmarks_storage(tmp_path):
    storage = tmp_path / ".benchmarks"
    first = _save_run(storage, "0001", "first", 10)
    second = _save_run(storage, "0002", "second", 20)
    url = f"file://{storage}"
    assert benchmark_bridge.resolve("latest", url) == second
    assert benchmark_bridge.resolve("1", url) == first and benchmark_bridge.resolve("0002", url) == second
    assert str(benchmark_bridge.resolve("some/file.json", url)) == "some/file.json"
    with pytest.raises(ValueError, match=r"no saved pytest-benchmark run '0007' under .*\.benchmarks"):
        benchmark_bridge.resolve("0007", url)
    with pytest.raises(ValueError, match="no saved pytest-benchmark run 'latest': no storage folder"):
        benchmark_bridge.resolve("latest", f"file://{tmp_path / 'none'}")
    assert not (tmp_path / "none").exists()
    with pytest.raises(ValueError, match="only pytest-benchmark's file storage can be read"):
        benchmark_bridge.resolve("latest", "elasticsearch+https://host:9200")


def test_vram_compare_latest_in_a_session(pytester):
    _save_run(pytester.path / ".benchmarks", "0001", "test_a", 10**9)
    pytester.makepyfile(test_a="def test_a(vram):\n    pass\n")
    result = run(pytester, "--vram-compare=latest")
    result.stdout.fnmatch_lines(["*GPU memory compared*", "compared with *0001_test_a.json"])


def test_vram_breakdown_and_its_ini_twin_put_the_breakdown_in_the_table(pytester):
    pytester.makepyfile(test_a="""
        import torch
        def test_a(vram):
            with vram.phase("step"):
                x = torch.zeros(2**18)
    """)
    plain = run(pytester)
    assert "activations" not in plain.stdout.str()
    run(pytester, "--vram-breakdown").stdout.fnmatch_lines(["case*status*frozen_weights*activations*"])
    pytester.makeini("[pytest]\nvram_breakdown = true\n")
    run(pytester).stdout.fnmatch_lines(["case*status*frozen_weights*activations*"])


def _config(**given):
    """A stand-in for pytest's config holding command-line values (ini: every default)."""
    values = {opt.ini: given.get(opt.name) for opt in options.OPTIONS}
    return types.SimpleNamespace(getoption=lambda name: values[name], getini=lambda name: None)


def test_settings_are_parsed_once_into_a_frozen_object():
    parsed = settings.Settings.from_config(_config(backend="sim", gpu="A100-40GB", busy_limit="1GiB", shard="2/3",
                                                   compare_fail=["step.peak:5%"], compare="old.json"))
    assert parsed.backend == "sim" and parsed.gpu.name == "a100_40gb" and parsed.busy_limit == 2**30
    assert str(parsed.shard) == "2/3" and parsed.compare_fail == ("step.peak:5%",) and parsed.busy == "warn"
    with pytest.raises(AttributeError):
        parsed.backend = "cpu"


@pytest.mark.parametrize("given, message", [
    ({"backend": "gpu"}, "--vram-backend: unknown backend 'gpu'; valid choices: auto, cuda, sim, cpu"),
    ({"busy": "panic"}, "--vram-busy: unknown action 'panic'; valid choices: warn, refuse, ignore"),
    ({"busy_limit": "9" * 400 + "GB"}, "--vram-busy-limit: malformed size '999*"),
    ({"compare_fail": ["step.peak:5%"]}, "--vram-compare-fail needs --vram-compare PATH|NNNN|latest"),
])
def test_each_bad_setting_is_one_usage_error(given, message):
    with pytest.raises(pytest.UsageError) as info:
        settings.Settings.from_config(_config(**given))
    assert info.match(message.replace("|", r"\|").replace("*", ".*"))


class _Backend:
    def __init__(self, held):
        self.held = list(held)

    def held_bytes(self, leftovers):
        return self.held.pop(0)


def test_the_fixture_collects_garbage_only_when_something_is_held(monkeypatch):
    """A full gc.collect() per test cost ~120 ms; it runs only when the device holds memory
    before the test (to tell a leak from garbage not yet collected)."""
    collections = []
    monkeypatch.setattr("gc.collect", lambda *a: collections.append(a) or 0)
    state = VramSession(settings.Settings(), "cpu", {}, [])
    assert state.baseline_bytes(_Backend([0])) == 0 and collections == []
    assert state.baseline_bytes(_Backend([4096, 0])) == 0 and len(collections) == 1  # garbage: collected
    assert state.baseline_bytes(_Backend([4096, 4096])) == 4096 and len(collections) == 2  # a leak
