"""Training the text encoder too (``train_text_encoder``, diffusers' DreamBooth LoRA scripts'
``--train_text_encoder``): the case's adapter on each CLIP encoder's q/k/v/out projections, the
encoders run with grad; the tiny twins train for real on CPU with the simulator giving the same
bytes, and a combination the suite does not model is one error."""
from __future__ import annotations

import pytest
import torch

from fixtures.cases import Case
from fixtures.models import get_model_spec
from pytest_vram.backends import CpuBackend
from pytest_vram.profiles import get_profile
from pytest_vram.sim.backend import SimBackend
from test_configs import measure

V100 = get_profile("v100")


def text_lora_params(model: str, rank: int) -> int:
    """LoRA on q/k/v/out_proj (each hidden x hidden) of every layer of every text encoder."""
    config = get_model_spec(model).config
    encoders = [config[k] for k in ("text_encoder", "text_encoder_2") if config.get(k)]
    return sum(4 * e["num_hidden_layers"] * rank * 2 * e["hidden_size"] for e in encoders)


@pytest.mark.slow
@pytest.mark.parametrize("model, quantization, autocast", [("sd15", "fp32", False), ("sd15", "fp16", True),
                                                           ("sd15", "nf4-dq", False), ("sdxl", "fp32", False),
                                                           ("sdxl", "fp16", True)])
def test_tiny_twin_with_its_text_encoders_trained_runs_for_real_and_the_simulator_agrees(model, quantization,
                                                                                           autocast):
    case = Case(model, "lora", quantization, rank=4, autocast=autocast, train_text_encoder=True).tiny_twin()
    unet_only = Case(model, "lora", quantization, rank=4, autocast=autocast).tiny_twin()
    loss, real = measure(CpuBackend(V100), case)
    _, sim = measure(SimBackend(V100, gpu_models=False), case)
    assert torch.isfinite(loss) and sim == real
    _, frozen = measure(SimBackend(V100, gpu_models=False), unet_only)
    assert real["trainable"] - frozen["trainable"] == text_lora_params(case.model, 4)
    assert real["step.peak"] > frozen["step.peak"]   # the encoders' activations and LoRA gradients


def test_the_case_id_says_it():
    case = Case("sd15", "lora", "fp32", rank=4, train_text_encoder=True)
    assert case.id == "sd15-lora-r4-fp32-te-bs1-512px"


@pytest.mark.parametrize("kwargs, message", [
    ({"model": "llama-7b"}, r"train_text_encoder cannot apply with model 'llama-7b' \(llm\); valid choices: a "
                            r"UNet diffusion model with CLIP text encoders \(sd15, sdxl"),
    ({"model": "flux1-dev"}, r"train_text_encoder cannot apply with model 'flux1-dev' \(flux\)"),
    ({"adapter": "lycoris-lokr"}, r"train_text_encoder cannot apply with adapter 'lycoris-lokr'; valid choices: a "
                                  r"peft adapter: lora, dora, loha, lokr, locon"),
    ({"checkpointing": True}, r"train_text_encoder cannot apply with checkpointing True; valid choices: "
                              r"checkpointing false"),
    ({"ranks": 2, "strategy": "ddp"}, r"train_text_encoder cannot apply with strategy 'ddp'; valid choices: "
                                      r"strategy 'none'"),
])
def test_what_the_suite_does_not_model_is_one_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Case(**{"model": "sd15", "adapter": "lora", "quantization": "fp32", "rank": 4, "train_text_encoder": True,
                **kwargs})


def test_the_fit_flag_and_the_cases_file_key_make_the_same_case():
    from fixtures.case_file import parse_case
    from fixtures.fit import case_from, parser

    flags = case_from(parser().parse_args(["sd15", "--rank", "4", "--quantization", "fp32", "--train-text-encoder"]))
    row = parse_case({"model": "sd15", "rank": 4, "quantization": "fp32", "train_text_encoder": True},
                     "cases.toml: case 1")
    assert flags == row and flags.train_text_encoder
