"""The plugin as a user sees it, through pytester: markers, options and their ini twins,
budget failures, expect_oom, OOM handling, records."""
import json

import pytest
from helpers import preload_simulator_shimmed_libraries

pytest_plugins = ["pytester"]
preload_simulator_shimmed_libraries()

FOUR_MIB = """
import torch, pytest

def allocate(n_mib):
    return torch.zeros(n_mib * 2**20 // 4)

{marks}
def test_case(vram):
    with vram.phase("creation"):
        kept = allocate(4)
    with vram.phase("step"):
        tmp = allocate({step_mib})
        del tmp
"""


def write(pytester, marks="@pytest.mark.vram_budget('1GiB')", step_mib=8):
    pytester.makepyfile(test_mem=FOUR_MIB.format(marks=marks, step_mib=step_mib))


def run(pytester, *args):
    return pytester.runpytest("-p", "no:cacheprovider", "-p", "no:randomly", *args)


def records(path):
    return json.loads(path.read_text())["records"]


def test_phases_are_recorded_in_integer_bytes(pytester):
    write(pytester)
    out = pytester.path / "vram.json"
    result = run(pytester, "--vram-backend=cpu", f"--vram-json={out}")
    result.assert_outcomes(passed=1)
    (rec,) = records(out)
    mib = 2**20
    assert rec["backend"] == "cpu" and rec["budget_bytes"] == 2**30 and rec["fits"] is True
    assert rec["phases"]["creation"]["allocated"] == 4 * mib
    assert rec["phases"]["step"]["peak"] == 12 * mib
    assert rec["phases"]["step"]["allocated"] == 4 * mib
    assert all(isinstance(v, int) for v in rec["phases"]["step"]["breakdown"].values())
    assert sum(rec["phases"]["step"]["breakdown"].values()) == 12 * mib


def test_summary_table_and_header(pytester):
    write(pytester, marks="@pytest.mark.v100")
    result = run(pytester, "--vram-backend=cpu", "--vram-gpu=t4")
    result.stdout.fnmatch_lines([
        "vram: backend=cpu, emulating t4*GiB*GB*",
        "*GPU memory (cpu backend)*",
        "case*after creation*largest phase*peak (reserved + context)*budget*% of budget*trainable params*status",
        "test_case*0.004 GiB*step*GiB*15.782 GiB (v100)*fits",
    ])


@pytest.mark.parametrize("backend", ["cpu", "sim"])
def test_over_budget_is_oom_at_that_phase_with_one_clear_message_on_every_backend(pytester, backend):
    """budget.py's rule: the allocation that passes the budget less the context runs out of
    memory, on cpu as on sim (and on cuda, by the allocator cap: test_budget.py)."""
    write(pytester, marks="@pytest.mark.vram_budget('10MiB')")
    out = pytester.path / "v.json"
    result = run(pytester, f"--vram-backend={backend}", f"--vram-json={out}")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "*test_case: out of memory in phase 'step': * (budget 0.010 GiB)",
        "*Captured vram call*",
    ])
    (rec,) = records(out)
    assert rec["status"] == "OOM" and rec["oom_phase"] == "step" and rec["fits"] is False
    assert rec["phases"]["creation"]["allocated"] == 4 * 2**20


def test_profile_marker_sets_budget_with_context(pytester):
    write(pytester, marks="@pytest.mark.v100")
    out = pytester.path / "v.json"
    run(pytester, "--vram-backend=cpu", f"--vram-json={out}").assert_outcomes(passed=1)
    (rec,) = records(out)
    assert rec["gpu"] == "v100" and rec["budget_bytes"] == 16_945_512_448
    step = rec["phases"]["step"]
    assert step["total"] == step["peak"] + step["context"] and step["context"] == 300 * 2**20


def test_expect_oom_passes_when_it_does_not_fit(pytester):
    write(pytester, marks="@pytest.mark.expect_oom\n@pytest.mark.vram_budget('10MiB')")
    run(pytester, "--vram-backend=cpu").assert_outcomes(passed=1)


def test_expect_oom_fails_when_it_fits(pytester):
    write(pytester, marks="@pytest.mark.expect_oom\n@pytest.mark.vram_budget('1GiB')")
    result = run(pytester, "--vram-backend=cpu")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*test_case: expected OOM, peaked at 0.012 GiB of 1.000 GiB*"])


OOM_TEST = """
import torch, pytest

{marks}
def test_oom(vram):
    with vram.phase("creation"):
        kept = torch.zeros(1024)
    with vram.phase("step"):
        big = torch.zeros(2**20)
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

def test_next_case_starts_clean(vram):
    with vram.phase("creation"):
        pass
    assert vram.phases["creation"].allocated == 0
"""


@pytest.mark.parametrize("expect", [False, True])
def test_oom_inside_a_phase_is_recorded_and_released(pytester, expect):
    pytester.makepyfile(test_oom=OOM_TEST.format(marks="@pytest.mark.expect_oom" if expect else ""))
    out = pytester.path / "v.json"
    result = run(pytester, "--vram-backend=cpu", f"--vram-json={out}")
    if expect:
        result.assert_outcomes(passed=2)
    else:
        result.assert_outcomes(failed=1, passed=1)
        result.stdout.fnmatch_lines(["*test_oom: out of memory in phase 'step': CUDA out of memory*"])
    oom, clean = records(out)
    assert oom["oom_phase"] == "step" and oom["status"] == "OOM" and oom["fits"] is False
    assert oom["phases"]["step"]["oom"] is True
    assert oom["phases"]["step"]["peak"] == 4 * 1024 + 4 * 2**20
    assert clean["phases"]["creation"]["allocated"] == 0


@pytest.mark.parametrize("ini, cli", [
    ("vram_backend = cpu\nvram_gpu = a10g", []),
    ("", ["--vram-backend=cpu", "--vram-gpu=a10g"]),
    ("vram_backend = sim\nvram_gpu = t4", ["--vram-backend=cpu", "--vram-gpu=a10g"]),
])
def test_options_and_their_ini_twins(pytester, ini, cli):
    pytester.makeini(f"[pytest]\n{ini}\nvram_json = from-ini.json\n")
    write(pytester, marks="")
    run(pytester, *cli).assert_outcomes(passed=1)
    (rec,) = records(pytester.path / "from-ini.json")
    assert rec["backend"] == "cpu" and rec["gpu"] == "a10g"


def test_vram_json_on_command_line_beats_ini(pytester):
    pytester.makeini("[pytest]\nvram_backend = cpu\nvram_json = ini.json\n")
    write(pytester)
    run(pytester, "--vram-json=cli.json").assert_outcomes(passed=1)
    assert (pytester.path / "cli.json").exists() and not (pytester.path / "ini.json").exists()


@pytest.mark.parametrize("args, message", [
    (["--vram-backend=gpu"], "unknown backend 'gpu'; valid choices: auto, cuda, sim, cpu"),
    (["--vram-gpu=v200"], "unknown GPU profile 'v200'; valid choices: v100, t4, *"),
])
def test_bad_options_get_one_clear_error(pytester, args, message):
    write(pytester)
    result = run(pytester, *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{message}*"])


def test_malformed_budget_is_a_usage_error(pytester):
    write(pytester, marks="@pytest.mark.vram_budget('twelve')")
    result = run(pytester, "--vram-backend=cpu")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*test_mem.py::test_case: vram_budget: malformed size 'twelve'*units: B, KB*"])


def test_every_marker_is_registered_with_help(pytester):
    result = run(pytester, "--markers")
    for name in ("v100", "t4", "a10g", "rtx3090", "rtx4090", "a100_40gb", "a100_80gb", "h100_80gb"):
        result.stdout.fnmatch_lines([f"@pytest.mark.{name}: budget the test for a *"])
    result.stdout.fnmatch_lines(["@pytest.mark.vram_budget(limit): *", "@pytest.mark.expect_oom: *"])


def test_markers_select_with_dash_m(pytester):
    pytester.makepyfile("""
        import pytest
        @pytest.mark.v100
        def test_a(vram): pass
        @pytest.mark.t4
        def test_b(vram): pass
    """)
    run(pytester, "--vram-backend=cpu", "-m", "v100").assert_outcomes(passed=1, deselected=1)


def test_benchmark_extra_info_and_machine_info(pytester):
    pytester.makepyfile(test_b="""
        import torch, pytest
        @pytest.mark.v100
        def test_b(vram, benchmark):
            benchmark.extra_info["mine"] = 1
            with vram.phase("step"):
                benchmark.pedantic(lambda: torch.ones(256), rounds=1, iterations=1)
    """)
    run(pytester, "--vram-backend=cpu", "--benchmark-json=b.json").assert_outcomes(passed=1)
    data = json.loads((pytester.path / "b.json").read_text())
    (bench,) = data["benchmarks"]
    assert bench["extra_info"]["mine"] == 1
    assert bench["extra_info"]["vram"]["phases"]["step"]["peak"] == 1024
    assert data["machine_info"]["vram"]["backend"] == "cpu"
    assert data["machine_info"]["vram"]["libraries"]["torch"].startswith("2.")
