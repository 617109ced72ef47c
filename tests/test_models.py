"""The model zoo and training steps: full-size configs match the published architectures,
tiny twins train only what the adapter trains and give a finite loss."""
import math

import pytest
import torch

from fixtures.adapters import apply_adapter, trained_part
from fixtures.cases import CASES, Case
from fixtures.models import MODELS, build_model, fill_weights, get_model_spec
from fixtures.training import STEPS, make_optimizer


@pytest.mark.parametrize("name", [m.name for m in MODELS.values() if m.published_params])
def test_full_size_parameter_counts_match_published(name):
    model = build_model(name, torch.float16, "meta")
    spec = get_model_spec(name)
    if spec.family == "llm":
        counts = {"model": sum(p.numel() for p in model.parameters())}
    else:
        counts = {part: sum(p.numel() for p in getattr(model, part).parameters()) for part in spec.published_params}
    assert counts == spec.published_params


def test_models_are_built_in_the_requested_dtype_without_fp32_copy():
    model = build_model("llama-tiny", torch.float16)
    assert {p.dtype for p in model.parameters()} == {torch.float16}
    assert torch.get_default_dtype() == torch.float32


def lora_params(family, rank, model):
    """LoRA adds A (r x in) and B (out x r) to each target Linear."""
    part = trained_part(model, family)
    targets = ("q_proj", "v_proj") if family == "llm" else ("to_q", "to_k", "to_v", "to_out.0")
    return sum(rank * (m.in_features + m.out_features) for n, m in part.named_modules()
               if isinstance(m, torch.nn.Linear) and n.endswith(targets))


@pytest.mark.parametrize("case", [c for c in CASES if not get_model_spec(c.model).full_size], ids=str)
def test_tiny_step_trains_only_adapter_and_loss_is_finite(case):
    family = case.family
    model = build_model(case.model, torch.float32)
    fill_weights(model)
    expected = lora_params(family, case.rank, model)
    model = apply_adapter(model, family, case.adapter, case.rank)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert sum(p.numel() for p in trainable.values()) == expected
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    grads = {}
    for name, p in trainable.items():
        p.register_post_accumulate_grad_hook(lambda p, name=name: grads.__setitem__(name, p.grad.abs().sum()))
    optimizer = make_optimizer(model)
    loss = STEPS[family](model, optimizer, case.batch_size, case.size, "cpu")
    assert math.isfinite(loss.item())
    assert set(grads) == set(trainable)
    frozen_changed = [n for n, p in model.named_parameters() if not p.requires_grad and not torch.equal(p, before[n])]
    assert frozen_changed == []
    assert any(not torch.equal(p, before[n]) for n, p in trainable.items())


@pytest.mark.parametrize("field, value, message", [
    ("model", "gpt-5", "unknown model 'gpt-5'; valid choices: llama-7b"),
    ("adapter", "lorax", "unknown adapter 'lorax'; valid choices: none, lora"),
    ("quantization", "int3", "unknown quantization 'int3'; valid choices: fp32, fp16"),
    ("gpu", "v200", "unknown GPU profile 'v200'"),
])
def test_bad_case_names_the_value_and_choices(field, value, message):
    kwargs = {"model": "llama-tiny", field: value}
    with pytest.raises(ValueError, match=message):
        Case(**kwargs)


def test_case_ids_are_readable_and_unique():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))
    assert "llama-7b-lora-r8-fp16-bs1-seq512" in ids
    assert "sd15-lora-r4-fp16-bs1-512px" in ids
