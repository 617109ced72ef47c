"""The cases file (fixtures/case_file.py): a project's own cases as TOML rows, checked with one
clear error each, and run by ``pytest benchmarks --vram-cases FILE`` (ini ``vram_cases``)."""
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures.case_file import load_cases, parse_case
from fixtures.cases import Case

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path, text, name="cases.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_rows_become_cases_with_the_suites_ids(tmp_path):
    path = write(tmp_path, '''
[[case]]
model = "qwen2.5-7b"
adapter = "lora"
rank = 16
targets = "all-linear"
quantization = "nf4-dq"
batch_size = 2
seq_len = 2048
optimizer = "adamw8bit"
checkpointing = true
gpu = "rtx4090"

[[case]]
model = "llama-tiny"
budget = "20GiB"
expect_oom = true
''')
    first, second = load_cases(path)
    assert first == Case("qwen2.5-7b", "lora", "nf4-dq", 16, "all-linear", 2, 2048, optimizer="adamw8bit",
                         checkpointing=True, gpu="rtx4090")
    assert first.id == "qwen2.5-7b-lora-r16-all-linear-nf4-dq-gc-adamw8bit-bs2-seq2048"
    assert (second.budget, second.expect_oom) == ("20GiB", True)


def test_a_config_path_is_relative_to_the_file(tmp_path):
    (tmp_path / "configs").mkdir()
    src = json.loads((REPO / "fixtures/zoo/mistral-7b.json").read_text())
    (tmp_path / "configs" / "my-model.json").write_text(json.dumps(src))
    (case,) = load_cases(write(tmp_path, '[[case]]\nmodel = "configs/my-model.json"\n'))
    assert case.model == str(tmp_path / "configs" / "my-model.json")
    assert case.id.startswith("my-model-lora-r8-fp16")


def test_a_diffusers_unet_config_is_a_diffusion_case(tmp_path):
    (tmp_path / "my-sd" / "unet").mkdir(parents=True)
    (tmp_path / "my-sd" / "unet" / "config.json").write_text((REPO / "fixtures/zoo/sd15-unet.json").read_text())
    (case,) = load_cases(write(tmp_path, '[[case]]\nmodel = "my-sd/unet/config.json"\nrank = 4\n'
                                         'quantization = "fp32"\nresolution = 768\n'))
    assert (case.family, case.id) == ("diffusion", "my-sd-lora-r4-fp32-bs1-768px")


def test_keys_are_the_case_fields_so_a_new_field_needs_no_loader_change(tmp_path, monkeypatch):
    @dataclasses.dataclass(frozen=True)
    class Wider(Case):
        new_switch: int = 1

    monkeypatch.setattr("fixtures.case_file.Case", Wider)
    case = parse_case({"model": "llama-tiny", "new_switch": 4}, "row")
    assert case.new_switch == 4


@pytest.mark.parametrize("text, message", [
    ('[[case]]\nmodel = "llama-tiny"\nbatch = 4\n',
     r"cases.toml: case 1: unknown key 'batch'; valid keys: model, adapter, quantization, rank, targets, batch_size"),
    ('[[case]]\nmodel = "llama-tiny"\n[[case]]\nmodel = "llama-tiny"\nquantization = "int3"\n',
     r"case 2: unknown quantization 'int3'; valid choices: fp32, fp16"),
    ('[[case]]\nmodel = "llama-tiny"\ngpu = "v200"\n', r"case 1: unknown GPU profile 'v200'; valid choices: v100"),
    ('[[case]]\nmodel = "gpt-5"\n', r"case 1: unknown model 'gpt-5'; valid choices: llama-7b.*mistral-7b"),
    ('[[case]]\nmodel = "llama-tiny"\ntargets = "qq_proj,v_proj"\n',
     r"case 1: targets 'qq_proj' match no layer of llama-tiny; valid choices: all-linear, attention, or module "
     r"names: down_proj, gate_proj, k_proj, lm_head, o_proj, q_proj, up_proj, v_proj"),
    ('[[case]]\nmodel = "llama-tiny"\nrank = "16"\n', r"case 1: rank = '16' should be an integer"),
    ('[[case]]\nmodel = "llama-tiny"\ncheckpointing = 1\n', r"case 1: checkpointing = 1 should be true/false"),
    ('[[case]]\nmodel = "llama-tiny"\nbatch_size = 0\n', r"case 1: batch_size = 0 should be a positive integer"),
    ('[[case]]\nmodel = "llama-tiny"\nseq_len = -512\n', r"case 1: seq_len = -512 should be a positive integer"),
    ('[[case]]\nmodel = "llama-tiny"\nbudget = "20"\n', r"case 1: budget '20': malformed size '20'"),
    ('[[case]]\nadapter = "lora"\n', r"case 1: no model"),
    ('[case]\nmodel = "llama-tiny"\n', r"holds no \[\[case\]\] tables"),
    ('model = "llama-tiny"\n', r"unknown top-level key 'model'; write each case as a \[\[case\]\] table"),
    ('[[case]\n', r"not valid TOML"),
])
def test_a_bad_file_gets_one_error_naming_the_bad_value_and_the_choices(tmp_path, text, message):
    with pytest.raises(ValueError, match=message):
        load_cases(write(tmp_path, text))


def test_a_named_target_set_that_matches_no_layer_lists_the_models_layers(tmp_path):
    config = {"model_type": "gpt_neox", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1,
              "num_attention_heads": 4, "vocab_size": 128}
    (tmp_path / "neox.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"targets 'attention' match no layer of .*neox.json; valid choices: "
                                         r"module names: .*query_key_value"):
        load_cases(write(tmp_path, '[[case]]\nmodel = "neox.json"\n'))


def test_two_rows_making_the_same_case_id_are_one_error_naming_the_id_and_both_rows(tmp_path):
    # rows 1 and 3 differ only in a value the id (and the run) does not use: an LLM's resolution
    path = write(tmp_path, '[[case]]\nmodel = "llama-tiny"\nseq_len = 64\n'
                           '[[case]]\nmodel = "llama-tiny"\nseq_len = 128\n'
                           '[[case]]\nmodel = "llama-tiny"\nseq_len = 64\nresolution = 256\n')
    with pytest.raises(ValueError) as info:
        load_cases(path)
    assert str(info.value) == (f"cases file {str(path)!r}: case 1 and case 3 are the same case "
                               "'llama-tiny-lora-r8-fp16-bs1-seq64'; give each row its own setup (or delete one)")


def test_a_missing_file_is_one_error(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        load_cases(tmp_path / "nope.toml")


def _pytest(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "pytest", *args, "-p", "no:cacheprovider", "--benchmark-disable",
                           "--vram-backend=sim"], cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_pytest_benchmarks_runs_only_the_files_cases_and_says_so(tmp_path):
    """Two LLM rows and a FLUX transformer config (a DiT: benchmarks/test_flux.py runs it)."""
    from fixtures.diffusers_configs import tiny_flux

    flux = tmp_path / "my-flux" / "transformer" / "config.json"
    flux.parent.mkdir(parents=True)
    flux.write_text(json.dumps(dict(tiny_flux({"in_channels": 64, "guidance_embeds": True}),
                                    _class_name="FluxTransformer2DModel")))
    path = write(tmp_path, '''
[[case]]
model = "llama-tiny"
seq_len = 64
budget = "2GiB"

[[case]]
model = "llama-tiny"
seq_len = 64
budget = "100MiB"
expect_oom = true

[[case]]
model = "my-flux/transformer/config.json"
rank = 4
resolution = 64
budget = "2GiB"
''')
    result = _pytest("benchmarks", "--vram-cases", str(path), "-v", f"--vram-json={tmp_path / 'out.json'}")
    out = result.stdout
    assert result.returncode == 0, out[-3000:]
    assert f"vram: --vram-cases {path}: 3 cases; only these run" in out
    assert "test_llama[llama-tiny-lora-r8-fp16-budget2GiB-bs1-seq64] PASSED" in out
    assert "test_llama[llama-tiny-lora-r8-fp16-budget100MiB-bs1-seq64] PASSED" in out
    assert "test_flux[my-flux-lora-r4-fp16-budget2GiB-bs1-64px] PASSED" in out
    assert "3 passed" in out and "deselected" in out
    records = {r["case"]: r for r in json.loads((tmp_path / "out.json").read_text())["records"]}
    assert {case: (r["budget_bytes"], r["status"]) for case, r in records.items()} == {
        "llama-tiny-lora-r8-fp16-budget2GiB-bs1-seq64": (2 << 30, "fits"),
        "llama-tiny-lora-r8-fp16-budget100MiB-bs1-seq64": (100 << 20, "OOM"),
        "my-flux-lora-r4-fp16-budget2GiB-bs1-64px": (2 << 30, "fits")}
    assert records["my-flux-lora-r4-fp16-budget2GiB-bs1-64px"]["trainable_params"] > 0


@pytest.mark.slow
def test_a_bad_cases_file_is_a_usage_error_and_the_ini_twin_is_read(tmp_path):
    write(tmp_path, '[[case]]\nmodel = "llama-tiny"\nbatch = 4\n', "bad.toml")
    result = _pytest("benchmarks", "--vram-cases", str(tmp_path / "bad.toml"))
    assert result.returncode == 4
    assert "ERROR: --vram-cases: " in result.stderr and "unknown key 'batch'; valid keys: model" in result.stderr
    assert "Traceback" not in result.stderr
    ini = write(tmp_path, f"[pytest]\nvram_cases = bad.toml\npythonpath = {REPO}\n", "pytest.ini")
    result = _pytest(str(REPO / "benchmarks"), "-c", str(ini), "--rootdir", str(REPO))
    assert result.returncode == 4 and "unknown key 'batch'" in result.stderr
