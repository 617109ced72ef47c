"""``pytest-vram fit`` (fixtures/fit.py, reached through the plugin's ``pytest_vram.commands``
entry point): the suite's verdict for one case from the command line, its margin, breakdown
and record, exit 0 / 1 / 2."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures.fit import command, simulate
from fixtures.cases import Case
from pytest_vram import cli
from pytest_vram.history import load

REPO = Path(__file__).resolve().parents[1]


def fit(capsys, *argv):
    code = command(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_a_case_that_fits_exits_0_with_verdict_margin_breakdown_and_record(capsys, tmp_path):
    path = tmp_path / "fit.json"
    code, out, _ = fit(capsys, "llama-tiny", "--seq-len", "64", "--budget", "1GiB", "--json", str(path))
    assert code == 0
    assert out.startswith("llama-tiny-lora-r8-fp16-budget1GiB-bs1-seq64: FITS (fits) on 1.000 GiB")
    assert "margin: 0." in out and "GiB to spare" in out
    assert "frozen_weights" in out and "allocator cache + context" in out  # the breakdown table
    history = load(path)  # the --vram-json schema, validated on load
    (rec,) = history.records
    assert rec["status"] == "fits" and rec["backend"] == "sim" and rec["budget_bytes"] == 1 << 30
    assert rec["test"] == "benchmarks/test_llama.py::test_llama[llama-tiny-lora-r8-fp16-budget1GiB-bs1-seq64]"
    assert rec["params"]["case"]["model"] == "llama-tiny" and rec["baseline_bytes"] == 0
    margin = int(out.split("GiB to spare (")[1].split(" bytes")[0])
    assert margin == rec["budget_bytes"] - rec["peak_total_bytes"]


def test_the_verdict_is_the_suites_for_the_same_case():
    """Same meter, same backend, same budget rule: fit's simulate() is the suite's run."""
    from pytest_vram.sim.backend import SimBackend
    from pytest_vram.meter import Meter
    from pytest_vram.profiles import get_profile
    from fixtures.fit import OneRound
    from fixtures.suite import run_case

    case = Case("llama-tiny", seq_len=64, budget="1GiB")
    ours = simulate(case)
    backend = SimBackend(get_profile("v100"), budget=1 << 30)
    meter = Meter(backend, backend.profile, 1 << 30)
    backend.start()
    try:
        run_case(case, meter, OneRound())
    finally:
        backend.stop()
    assert {n: p.to_dict() for n, p in ours.phases.items()} == {n: p.to_dict() for n, p in meter.phases.items()}


def test_a_case_that_does_not_fit_exits_1_and_says_what_it_needs(capsys):
    code, out, _ = fit(capsys, "llama-tiny", "--seq-len", "64", "--budget", "310MiB")
    assert code == 1
    assert ": DOES NOT FIT (OOM) on 0.303 GiB" in out
    need = int(out.split("the case needs ")[1].split("(")[1].split(" bytes")[0])
    assert need > 310 << 20 and "more than the budget of 0.303 GiB" in out


@pytest.mark.parametrize("argv, message", [
    (["gpt-5"], "unknown model 'gpt-5'; valid choices: llama-7b"),
    (["llama-tiny", "--gpu", "v200"], "unknown GPU profile 'v200'; valid choices: v100"),
    (["llama-tiny", "--quantization", "int3"], "unknown quantization 'int3'; valid choices: fp32"),
    (["llama-tiny", "--budget", "12"], "budget '12': malformed size"),
    (["llama-tiny", "--targets", "qq_proj"], "targets 'qq_proj' match no layer of llama-tiny; valid choices"),
])
def test_bad_input_exits_2_with_one_message(capsys, argv, message):
    code, _, err = fit(capsys, *argv)
    assert code == 2
    assert err.startswith("pytest-vram fit: error: ") and message in err and "Traceback" not in err


def test_argparse_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        command(["llama-tiny", "--gpu", "v100", "--budget", "1GiB"])
    assert exc.value.code == 2


@pytest.fixture
def commands_entry_point(tmp_path, monkeypatch):
    """What ``pip install -e .`` registers from pyproject.toml: the ``pytest_vram.commands`` group."""
    info = tmp_path / "suite_commands-0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: suite-commands\nVersion: 0\n")
    (info / "entry_points.txt").write_text("[pytest_vram.commands]\nfit = fixtures.fit:command\n"
                                           "broken = no_such_suite.fit:command\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_the_cli_finds_fit_through_the_entry_point_group(commands_entry_point, capsys):
    assert cli.main(["fit", "llama-tiny", "--seq-len", "64", "--budget", "1GiB"]) == 0
    assert "FITS" in capsys.readouterr().out


def test_a_command_whose_suite_is_not_importable_says_how_to_get_it(commands_entry_point, capsys):
    assert cli.main(["broken", "x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot be imported" in err and "pip install -e '.[suite]'" in err


def test_the_installed_console_script_runs_fit_from_the_repository_root():
    """The README's ``pytest-vram fit ...``, typed in a checkout: the console script's sys.path
    starts at its bin/ folder, so the command is resolved against the current directory too."""
    import os
    import shutil

    script = shutil.which("pytest-vram") or str(Path(sys.executable).with_name("pytest-vram"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([script, "fit", "--help"], cwd=REPO, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "--max-seq-len" in out.stdout and "cannot be imported" not in out.stderr


def test_pyproject_declares_the_fit_entry_point():
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["entry-points"]["pytest_vram.commands"] == {"fit": "fixtures.fit:command"}


@pytest.mark.slow
def test_fit_of_a_7b_config_from_the_command_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "fixtures.fit", "mistral-7b", "--quantization", "nf4-dq",
                             "--checkpointing", "--seq-len", "1024", "--json", str(tmp_path / "r.json")],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("mistral-7b-lora-r8-nf4-dq-gc-bs1-seq1024: FITS (fits) on 15.782 GiB (v100)")
    assert json.loads((tmp_path / "r.json").read_text())["records"][0]["status"] == "fits"


# -- the solver (fixtures/solver.py) ------------------------------------------------------------
from fixtures.solver import largest  # noqa: E402
from fixtures.what_if import demand, switches, what_if  # noqa: E402

TINY = Case("llama-tiny", seq_len=64, budget="400MiB")


@pytest.mark.parametrize("field, values", [("batch_size", [1, 2, 4, 8, 16]), ("seq_len", [16, 32, 64, 128, 256])])
def test_the_peak_never_falls_as_batch_or_sequence_grows(field, values):
    """The monotonicity the search relies on: every value below one that fits fits too."""
    import dataclasses

    peaks = [demand(dataclasses.replace(TINY, **{field: v})) for v in values]
    assert peaks == sorted(peaks) and peaks[0] < peaks[-1]


def test_the_largest_batch_was_simulated_to_fit_and_one_more_was_simulated_not_to(capsys):
    import dataclasses

    lines = []
    found = largest(TINY, "batch_size", 0, 1, say=lambda line, flush=False: lines.append(line))
    assert f"probe batch_size={found}: fits" in "\n".join(lines)
    assert any(line.startswith(f"probe batch_size={found + 1}: does not fit") for line in lines)
    assert simulate(dataclasses.replace(TINY, batch_size=found)).status == "fits"


def test_headroom_is_left_free_under_the_budget():
    import dataclasses

    headroom = 20 << 20
    found = largest(TINY, "batch_size", headroom, 1, say=lambda *a, **k: None)
    assert found is not None
    # it fits a budget smaller by the headroom (as if something else held the headroom)
    meter = simulate(dataclasses.replace(TINY, batch_size=found), (400 << 20) - headroom)
    assert meter.status == "fits" and meter.peak_total <= (400 << 20) - headroom
    assert found <= largest(TINY, "batch_size", 0, 1, say=lambda *a, **k: None)


def test_nothing_fits_is_none_and_exit_1(capsys):
    assert largest(dataclasses_replace(TINY, budget="300MiB"), "batch_size", 0, 1, say=lambda *a, **k: None) is None
    code, out, _ = fit(capsys, "llama-tiny", "--seq-len", "64", "--budget", "300MiB", "--max-batch-size")
    assert code == 1 and "no batch_size fits" in out


def dataclasses_replace(case, **kw):
    import dataclasses

    return dataclasses.replace(case, **kw)


def test_an_interrupted_search_keeps_the_largest_fit_so_far():
    lines = []

    def say(line, flush=False):
        lines.append(line)
        if len(lines) == 3:
            raise KeyboardInterrupt

    found = largest(TINY, "batch_size", 0, 1, say=say)
    fitting = [int(line.split("=")[1].split(":")[0]) for line in lines if ": fits" in line]
    assert found == max(fitting)
    assert lines[-1] == f"interrupted: the largest batch_size simulated to fit so far is {found}"


def test_the_command_line_search_prints_one_line_per_probe_and_the_answer(capsys):
    code, out, _ = fit(capsys, "llama-tiny", "--budget", "400MiB", "--max-seq-len", "--granularity", "32")
    assert code == 0
    probes = [line for line in out.splitlines() if line.startswith("probe seq_len=")]
    answer = int(out.strip().splitlines()[-1].rsplit(" ", 1)[1])
    assert f"probe seq_len={answer}: fits" in out and len(probes) >= 3


def test_what_if_lists_each_switch_best_saving_first(capsys):
    case = Case("llama-tiny", seq_len=64, targets="all-linear", rank=8)
    names = [name for name, _ in switches(case)]
    assert names == ["checkpointing", "optimizer adamw8bit", "optimizer paged-adamw8bit", "nf4-dq",
                     "fp16 + autocast", "rank 4", "attention targets", "eager attention"]
    rows = what_if(dataclasses_replace(case, batch_size=8, seq_len=128), say=lambda *a, **k: None)
    assert sorted(name for _, name, _, _ in rows) == sorted(names)
    assert [saving for saving, *_ in rows] == sorted((saving for saving, *_ in rows), reverse=True)
    base = demand(dataclasses_replace(case, batch_size=8, seq_len=128))
    assert all(saving == base - peak for saving, _, peak, _ in rows)
    assert dict((n, s) for s, n, _, _ in rows)["checkpointing"] > 0  # it saves activations
    code, out, _ = fit(capsys, "llama-tiny", "--seq-len", "64", "--targets", "all-linear", "--what-if")
    assert code == 0 and "\nswitch " in out and "eager attention" in out



@pytest.mark.parametrize("quantization, four_bit", [("bf16", ["nf4-dq-bf16"]), ("nf4-dq-bf16", [])])
def test_what_if_under_fsdp_offers_only_switches_the_layout_takes(capsys, quantization, four_bit):
    """Under FSDP2 the 4-bit switch is NF4 stored as bf16 (uint8-packed NF4 cannot be sharded: a
    Case refuses it), bitsandbytes' 8-bit optimizers are not offered (they cannot step DTensors),
    and CPU offload and reshard_after_forward are switches too."""
    case = Case("llama-tiny", quantization=quantization, seq_len=64, gpu="a100_80gb", ranks=2, strategy="fsdp")
    names = [name for name, _ in switches(case)]
    assert [n for n in names if n.startswith("nf4")] == four_bit
    assert {"cpu offload", "no reshard after forward"} <= set(names)
    assert not [n for n in names if n.startswith("optimizer")]  # bitsandbytes' cannot step DTensors
    variants = dict(switches(case))
    assert variants["cpu offload"].cpu_offload and not variants["no reshard after forward"].reshard
    assert all(v.layout == case.layout for n, v in variants.items() if n not in ("cpu offload", "no reshard after forward"))
    if four_bit:
        code, out, err = fit(capsys, "llama-tiny", "--quantization", quantization, "--seq-len", "64", "--gpu",
                             "a100_80gb", "--ranks", "2", "--strategy", "fsdp", "--what-if")
        assert (code, err) == (0, "") and "\nswitch " in out
        assert all(f"  simulated: {n}\n" in out for n in names)


def test_what_if_leaves_out_a_switch_the_case_cannot_take():
    """FLUX has no eager attention; a trained text encoder is not checkpointed: those switches are
    left out, every other is offered."""
    flux = [name for name, _ in switches(Case("flux1-dev", rank=4))]
    assert "eager attention" not in flux and {"checkpointing", "nf4-dq", "rank 2"} <= set(flux)
    te = [name for name, _ in switches(Case("sd15", "lora", "fp32", rank=4, train_text_encoder=True))]
    assert "checkpointing" not in te and "eager attention" in te

def test_gpus_lists_every_profile(capsys):
    from pytest_vram.profiles import PROFILES

    code, out, _ = fit(capsys, "llama-tiny", "--seq-len", "64", "--gpus")
    assert code == 0
    rows = out[out.index("gpu "):].splitlines()[2:]
    assert [line.split()[0] for line in rows] == list(PROFILES)
    assert all(line.rstrip().endswith("fits") for line in rows)


def test_a_search_that_does_not_apply_is_a_usage_error(capsys):
    code, _, err = fit(capsys, "llama-tiny", "--max-resolution")
    assert code == 2 and "--max-resolution does not apply to a llm model" in err


def test_a_probe_on_the_model_built_once_is_the_fresh_simulation_of_its_value():
    """The solver's probes fork after one build; each must equal a run that builds anew."""
    from fixtures.solver import Prober

    prober = Prober(TINY, 400 << 20)
    try:
        probed = {bs: prober("batch_size", bs) for bs in (1, 512, 4)}
    finally:
        prober.close()
    for bs, result in probed.items():
        fresh = simulate(dataclasses_replace(TINY, batch_size=bs), 400 << 20)
        assert result["phases"] == {n: p.to_dict() for n, p in fresh.phases.items()}
        assert (result["status"], result["peak_total"], result["oom_phase"]) == \
            (fresh.status, fresh.peak_total, fresh.oom_phase)
    assert probed[1]["status"] == "fits" and probed[512]["status"] == "OOM"  # both kinds were compared


# -- the parallel layout: --ranks, --strategy, --cpu-offload, --no-reshard, --measured-rank ----------

@pytest.mark.parametrize("argv, message", [
    (["--ranks", "4", "--strategy", "fsd"], "unknown strategy 'fsd'; valid choices: none, fsdp, fsdp1, ddp"),
    (["--ranks", "4"], "ranks=4 needs a strategy to spread the case over them; valid choices: fsdp, fsdp1, ddp"),
    (["--ranks", "0", "--strategy", "fsdp"], "ranks 0 is not a positive whole number"),
    (["--strategy", "fsdp"], "strategy 'fsdp' with ranks=1: a parallel strategy needs at least 2 ranks"),
    (["--ranks", "3", "--strategy", "ddp", "--measured-rank", "3"],
     "rank 3 does not exist in a world of 3; valid choices: 0..2"),
    (["--ranks", "2", "--strategy", "ddp", "--cpu-offload"], "cpu_offload applies to strategy 'fsdp' only"),
    (["--ranks", "2", "--strategy", "ddp", "--no-reshard"], "reshard=False applies to strategy 'fsdp' only"),
    (["--ranks", "2", "--strategy", "fsdp", "--optimizer", "adamw8bit"],
     "strategy 'fsdp' with optimizer 'adamw8bit' cannot be"),
])
def test_a_layout_that_cannot_be_exits_2_with_check_layouts_message(capsys, argv, message):
    code, out, err = fit(capsys, "llama-tiny", *argv)
    assert code == 2 and out == ""
    assert err.startswith("pytest-vram fit: error: ") and message in err and "Traceback" not in err
    assert err.count("\n") == 1


def test_layout_flags_make_the_case_a_cases_file_row_makes():
    """``--ranks 4 --strategy fsdp --cpu-offload --no-reshard --measured-rank 2`` and the
    cases-file keys ``ranks``/``strategy``/``cpu_offload``/``reshard``/``measured_rank`` give the
    same Case, hence the same layout and simulation."""
    from fixtures.case_file import parse_case
    from fixtures.fit import case_from, parser

    argv = ["llama-tiny", "--ranks", "4", "--strategy", "fsdp", "--cpu-offload", "--no-reshard",
            "--measured-rank", "2"]
    flags = case_from(parser().parse_args(argv))
    row = parse_case({"model": "llama-tiny", "ranks": 4, "strategy": "fsdp", "cpu_offload": True,
                      "reshard": False, "measured_rank": 2}, "cases.toml: case 1")
    assert flags == row
    assert (flags.layout.ranks, flags.layout.strategy, flags.layout.rank) == (4, "fsdp", 2)
    assert flags.layout.cpu_offload and not flags.layout.reshard
    assert flags.id.endswith("-fsdp4-offload-noreshard-rank2-bs1-seq512")


def test_a_rank_of_a_sharded_job_gets_its_own_verdict_and_record(capsys, tmp_path):
    """The budget is per rank: a full fine-tune that does not fit a budget on one GPU fits it as
    one rank of 4 under FSDP2 (a quarter of the parameters, gradients and AdamW state). The budget
    lies between the two simulated peaks; the record names the rank. The model is a 2-layer LLaMA
    of 1024 wide (90M parameters): on the tiny twin the segments FSDP2's own streams cache
    outweigh what sharding saves."""
    config = tmp_path / "config.json"
    config.write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 1024,
        "intermediate_size": 2816, "num_hidden_layers": 2, "num_attention_heads": 16, "num_key_value_heads": 16,
        "vocab_size": 32000, "max_position_embeddings": 2048, "rms_norm_eps": 1e-6, "tie_word_embeddings": False}))
    base = dict(adapter="none", quantization="fp32", seq_len=64, gpu="v100")
    single = simulate(Case(str(config), **base)).peak_total
    sharded = simulate(Case(str(config), **base, ranks=4, strategy="fsdp", measured_rank=1)).peak_total
    assert sharded < single
    budget = f"{(single + sharded) // 2}B"
    common = [str(config), "--adapter", "none", "--quantization", "fp32", "--seq-len", "64", "--budget", budget]
    code, out, _ = fit(capsys, *common)
    assert code == 1 and "DOES NOT FIT" in out
    path = tmp_path / "rank.json"
    code, out, _ = fit(capsys, *common, "--ranks", "4", "--strategy", "fsdp", "--measured-rank", "1",
                       "--json", str(path))
    assert code == 0 and "FITS (fits)" in out and "simulated (rank 1 of 4 (fsdp), " in out
    (rec,) = load(path).records
    assert rec["parallel"] == {"ranks": 4, "strategy": "fsdp", "rank": 1}
    assert rec["peak_total_bytes"] == sharded
    case = rec["params"]["case"]
    assert (case["ranks"], case["strategy"], case["measured_rank"], case["cpu_offload"], case["reshard"]) == \
        (4, "fsdp", 1, False, True)
