"""Models from configs (fixtures/configs.py, fixtures/diffusers_configs.py): the zoo's full-size
configs (transformers causal LMs and diffusers UNets) build the published architectures, each architecture's tiny twin runs for real on CPU with the simulator predicting
the same bytes, and a config that cannot be used gets one clear error."""
import json

import pytest
import torch

from fixtures.cases import Case
from fixtures.configs import find_config, label, read_config, tiny_config, zoo_names
from fixtures.models import build_model, get_model_spec
from pytest_vram.backends import CpuBackend
from pytest_vram.profiles import get_profile
from pytest_vram.sim.backend import SimBackend

V100 = get_profile("v100")
ZOO = zoo_names()
LLM_ZOO = [n for n in ZOO if get_model_spec(n).family == "llm"]
DIFFUSION_ZOO = [n for n in ZOO if get_model_spec(n).family == "diffusion"]
FLUX_ZOO = [n for n in ZOO if get_model_spec(n).family == "flux"]
# a UNet twin's real CPU step (VAE, text encoder, UNet) takes 10-40 s on this machine
TWINS = [pytest.param(n, marks=pytest.mark.slow) if n in DIFFUSION_ZOO else n for n in ZOO]


def test_the_zoo_holds_the_models_people_fine_tune():
    assert {"llama-2-7b", "llama-3-8b", "mistral-7b", "qwen2.5-7b", "gemma-2-9b", "phi-3-mini"} <= set(LLM_ZOO)
    assert {"sd15-unet", "sdxl-unet"} <= set(DIFFUSION_ZOO)
    assert "flux1-dev" in FLUX_ZOO  # a DiT
    assert set(LLM_ZOO + DIFFUSION_ZOO + FLUX_ZOO) == set(ZOO)


@pytest.mark.parametrize("name", ZOO)
def test_zoo_config_cites_its_source_and_the_loader_strips_it(name):
    data = read_config(find_config(name))
    assert "huggingface.co/" in data["_source"] and data["_published_params"]["source"]
    assert not any(k.startswith("_") for k in get_model_spec(name).config)


@pytest.mark.parametrize("name", ZOO)
def test_zoo_parameter_count_matches_published(name):
    """Per published part: the whole model for an LLM, the UNet of a diffusion pipeline (its text
    encoders and VAE are the zoo pipeline's, counted in tests/test_models.py)."""
    spec = get_model_spec(name)
    model = build_model(name, "fp16", "meta")
    parts = {part: model if part == "model" else model.get_submodule(part) for part in spec.published_params}
    assert {part: sum(p.numel() for p in m.parameters()) for part, m in parts.items()} == spec.published_params
    assert {p.dtype for p in model.parameters()} == {torch.float16}  # not the config's torch_dtype


def test_tiny_twin_keeps_the_architecture_with_small_widths():
    full = get_model_spec("gemma-2-9b").config
    tiny = tiny_config(full)
    assert tiny["model_type"] == "gemma2" and tiny["attn_logit_softcapping"] == full["attn_logit_softcapping"]
    assert (tiny["num_attention_heads"], tiny["num_key_value_heads"], tiny["head_dim"]) == (4, 2, 16)  # GQA kept
    mha = tiny_config(get_model_spec("llama-2-7b").config)
    assert mha["num_key_value_heads"] == mha["num_attention_heads"]  # MHA kept
    assert tiny_config(get_model_spec("mistral-7b").config)["sliding_window"] == 32  # < the twins' 64 tokens


class OneRound:
    def pedantic(self, fn, args=(), rounds=1, iterations=1):
        return fn(*args)


def measure(backend, case):
    from fixtures.suite import run_case
    from pytest_vram.meter import Meter

    meter = Meter(backend, backend.profile, None)
    backend.start()
    try:
        loss = run_case(case, meter, OneRound())
    finally:
        backend.stop()
    c, s = meter.phases["creation"], meter.phases["step"]
    return loss, {"creation.allocated": c.allocated, "step.peak": s.peak, "step.allocated": s.allocated,
                  "trainable": meter.trainable_params, "breakdown": s.breakdown}


def zoo_case(name, quantization):
    """LoRA on every linear layer of an LLM; on the UNet's attention (diffusers' LoRA recipe)."""
    if get_model_spec(name).family == "llm":
        return Case(name, "lora", quantization, targets="all-linear")
    return Case(name, "lora", quantization, rank=4)


@pytest.mark.parametrize("name", TWINS)
def test_tiny_twin_trains_for_real_on_cpu(name):
    case = zoo_case(name, "nf4-dq").tiny_twin()
    assert case.model == f"{name}-tiny"
    loss, real = measure(CpuBackend(V100), case)
    assert torch.isfinite(loss) and real["trainable"] > 0


@pytest.mark.parametrize("name", TWINS)
@pytest.mark.parametrize("quantization", ["fp32", "nf4-dq"])
def test_simulator_predicts_the_tiny_twins_real_bytes(name, quantization):
    case = zoo_case(name, quantization).tiny_twin()
    _, real = measure(CpuBackend(V100), case)
    _, sim = measure(SimBackend(V100, gpu_models=False), case)
    assert sim == real


def test_a_config_path_names_the_case_by_its_file(tmp_path):
    path = tmp_path / "my-model.json"
    path.write_text(json.dumps(read_config(find_config("qwen2.5-7b"))))
    case = Case(str(path), "lora", "nf4-dq")
    assert case.id.startswith("my-model-lora-r8-nf4-dq")
    assert get_model_spec(str(path)).config["model_type"] == "qwen2"
    folder = tmp_path / "Qwen2.5-7B"
    folder.mkdir()
    (folder / "config.json").write_text(path.read_text())
    assert label(str(folder)) == "Qwen2.5-7B" and label(str(folder / "config.json")) == "Qwen2.5-7B"
    other = tmp_path / "b" / "my-model.json"  # the same label, another architecture: its own twin
    other.parent.mkdir()
    other.write_text(json.dumps(read_config(find_config("mistral-7b"))))
    twin, other_twin = get_model_spec(str(path)).tiny, get_model_spec(str(other)).tiny
    assert twin != other_twin and get_model_spec(other_twin).config["model_type"] == "mistral"


@pytest.mark.parametrize("content, message", [
    (None, "no such file"),
    ("{not json", "not a readable JSON config"),
    ('{"model_type": "vit"}', "model_type 'vit' is not a causal LM .* valid choices: .*llama"),
])
def test_a_bad_config_gets_one_clear_error(tmp_path, content, message):
    path = tmp_path / "config.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ValueError, match=message):
        get_model_spec(str(path))


def test_an_unknown_hub_id_is_never_downloaded_and_says_so(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ValueError, match="unknown model 'someone/not-cached'; valid choices: .*mistral-7b.*"
                                         "local Hugging Face cache .*HF_HUB_OFFLINE=1"):
        get_model_spec("someone/not-cached")


def test_a_hub_id_whose_config_is_in_the_local_cache_is_used(monkeypatch, tmp_path):
    import huggingface_hub.constants as constants

    snapshot = tmp_path / "models--acme--tiny-qwen" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps(read_config(find_config("qwen2.5-7b"))))
    (tmp_path / "models--acme--tiny-qwen" / "refs").mkdir()
    (tmp_path / "models--acme--tiny-qwen" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    assert get_model_spec("acme/tiny-qwen").config["hidden_size"] == 3584
    assert Case("acme/tiny-qwen").id.startswith("tiny-qwen-lora")


# -- diffusers configs (fixtures/diffusers_configs.py) -------------------------------------------
def unet_config(tmp_path, name="sd15-unet", folder="my-sd", **changes):
    """A zoo UNet config written as a diffusers pipeline's ``unet/config.json``, with changes."""
    data = dict(read_config(find_config(name)), **changes)
    path = tmp_path / folder / "unet" / "config.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(data))
    return str(path)


@pytest.mark.parametrize("unet, pipeline", [("sd15-unet", "sd15"), ("sdxl-unet", "sdxl")])
def test_a_unet_config_is_the_zoo_pipeline_it_plugs_into(unet, pipeline):
    """SD 1.5's and SDXL's published UNet configs build exactly the suite's SD 1.5 and SDXL (every
    parameter's name and shape), with that pipeline's text encoders and VAE."""
    ours, zoo = build_model(unet, "fp32", "meta"), build_model(pipeline, "fp32", "meta")
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in zoo.state_dict().items()}
    assert get_model_spec(unet).family == "diffusion"


def test_a_pipeline_folder_names_the_case_and_a_newer_diffusers_key_is_dropped(tmp_path):
    path = unet_config(tmp_path, some_future_option=True)  # as diffusers' from_config drops it
    assert label(path) == "my-sd"
    assert Case(path, "lora", "fp32", rank=4).id == "my-sd-lora-r4-fp32-bs1-512px"
    assert "some_future_option" not in get_model_spec(path).config["unet"]


@pytest.mark.parametrize("changes, message", [
    ({"cross_attention_dim": 1024}, r"cross_attention_dim = 1024 does not fit the sd15 pipeline this UNet plugs "
                                    r"into \(its text encoders and VAE give 768\); valid choices: an SD 1.5-style"),
    ({"in_channels": 9}, r"in_channels = 9 does not fit the sd15 pipeline .* give 4\)"),
    ({"_class_name": "SD3Transformer2DModel"}, r"_class_name 'SD3Transformer2DModel' is not supported yet: .* "
                                               r"valid choices: 'UNet2DConditionModel', 'FluxTransformer2DModel'"),
    ({"_class_name": "AutoencoderKL"}, r"_class_name 'AutoencoderKL' is no model the suite trains; valid choices: "
                                       r"'UNet2DConditionModel' \(a diffusers UNet\), 'FluxTransformer2DModel'"),
])
def test_a_diffusers_config_the_suite_cannot_train_is_one_clear_error(tmp_path, changes, message):
    path = unet_config(tmp_path, **changes)
    with pytest.raises(ValueError, match=f"model config '{path}': " + message):
        get_model_spec(path)


def test_an_sdxl_unet_must_take_sdxls_added_conditioning(tmp_path):
    path = unet_config(tmp_path, "sdxl-unet", projection_class_embeddings_input_dim=2560)
    with pytest.raises(ValueError, match=r"projection_class_embeddings_input_dim = 2560 does not fit the sdxl "
                                         r"pipeline .* give 2816\)"):
        get_model_spec(path)


@pytest.mark.slow
def test_fit_takes_a_unet_config_and_prints_a_verdict(tmp_path, capsys):
    from fixtures.fit import command

    path = unet_config(tmp_path)
    assert command([path, "--resolution", "512", "--quantization", "fp32", "--rank", "4"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("my-sd-lora-r4-fp32-bs1-512px: FITS (fits) on 15.782 GiB (v100), simulated")
    assert "margin: " in out and "to spare" in out



# -- a DiT: FLUX's transformer config (fixtures/diffusers_configs.py flux_config) ------------------
def test_the_flux_zoo_config_is_the_validation_sets_flux_dev():
    """FLUX.1-dev's published transformer config builds the model the validation set replays
    (fixtures/models.py ``flux-dev``, checked against the FLUX QLoRA blog there): every
    parameter's name and shape."""
    ours, theirs = build_model("flux1-dev", "fp16", "meta"), build_model("flux-dev", "fp16", "meta")
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}


def test_lora_on_flux_attention_trains_what_diffusers_flux_qlora_script_trains():
    """flux-qlora.md: LoRA r4 on to_k/to_q/to_v/to_out.0 is "trainable params: 4,669,440"."""
    from fixtures.adapters import apply_adapter

    model = apply_adapter(build_model("flux1-dev", "fp16", "meta"), "flux", "lora", 4)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 4_669_440


def test_a_flux_transformer_folder_names_the_case_by_its_pipeline(tmp_path):
    path = tmp_path / "FLUX.1-dev" / "transformer" / "config.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(dict(read_config(find_config("flux1-dev")), some_future_option=1)))
    assert Case(str(path), "lora", "nf4-dq", rank=4, resolution=1024).id == "FLUX.1-dev-lora-r4-nf4-dq-bs1-1024px"
    assert "some_future_option" not in get_model_spec(str(path)).config  # as diffusers' from_config drops it


def test_flux_has_no_eager_attention_and_is_not_sharded_by_fsdp():
    with pytest.raises(ValueError, match="attention 'eager' does not apply to 'flux1-dev' .*valid choices for it: sdpa"):
        Case("flux1-dev", rank=4, attention="eager")
    with pytest.raises(ValueError, match="strategy 'fsdp' cannot apply to 'flux1-dev' \\(flux\\)"):
        Case("flux1-dev", rank=4, quantization="bf16", gpu="a100_80gb", ranks=2, strategy="fsdp")


@pytest.mark.slow
def test_fit_takes_flux_and_prints_a_verdict(capsys):
    """The full-size FLUX.1-dev QLoRA case (the blog's r4 LoRA at 512 px, checkpointing, 8-bit
    AdamW) on an RTX 4090, from the command line."""
    from fixtures.fit import command

    code = command(["flux1-dev", "--quantization", "nf4-dq", "--rank", "4", "--resolution", "512",
                    "--checkpointing", "--optimizer", "adamw8bit", "--gpu", "rtx4090"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.startswith("flux1-dev-lora-r4-nf4-dq-gc-adamw8bit-bs1-512px: FITS (fits) on ")
