"""The model zoo and training steps: full-size configs match the published architectures,
tiny twins train only what the adapter trains and give a finite loss."""
import math

import pytest
import torch

from fixtures.adapters import apply_adapter, get_adapter, target_names
from fixtures.cases import CASES, Case
from fixtures.models import MODELS, build_model, get_model_spec, trained_part
from fixtures.training import STEPS, make_optimizer, prepare_for_training, train_mode


@pytest.mark.parametrize("name", [m.name for m in MODELS.values() if m.published_params])
def test_full_size_parameter_counts_match_published(name):
    model = build_model(name, "fp16", "meta")
    spec = get_model_spec(name)
    if spec.family == "llm":
        counts = {"model": sum(p.numel() for p in model.parameters())}
    else:  # a pipeline's parts by name; "model": the whole model (a FLUX transformer from the zoo)
        counts = {part: sum(p.numel() for p in (model if part == "model" else getattr(model, part)).parameters())
                  for part in spec.published_params}
    assert counts == spec.published_params


def test_models_are_built_in_the_requested_dtype_without_fp32_copy():
    model = build_model("llama-tiny", "fp16")
    assert {p.dtype for p in model.parameters()} == {torch.float16}
    assert torch.get_default_dtype() == torch.float32


def _closest_factors(n):
    """n = a * b with a <= b and a as close to sqrt(n) as possible (LoKr's factorization)."""
    a = max(d for d in range(1, math.isqrt(n) + 1) if n % d == 0)
    return a, n // a


def _module_params(adapter, rank, module):
    """The adapter's trainable parameters on one target module, from its published form."""
    if isinstance(module, torch.nn.Conv2d):   # LoCon: r x (in * k * k) down, 1x1 r -> out up
        k = module.kernel_size[0] * module.kernel_size[1]
        return rank * (module.in_channels * k + module.out_channels)
    i, o = module.in_features, module.out_features
    if adapter in ("lora", "locon", "lycoris-lora", "lycoris-locon"):
        return rank * (i + o)                        # B (o x r) A (r x i)
    if adapter == "dora":
        return rank * (i + o) + o                    # + magnitude vector
    if adapter in ("loha", "lycoris-loha"):
        return 2 * rank * (i + o)                    # two Hadamard-multiplied rank-r pairs
    if adapter == "ia3":
        return o                                     # one scale per output feature
    if adapter in ("lokr", "lycoris-lokr"):
        (o1, o2), (i1, i2) = _closest_factors(o), _closest_factors(i)
        w2 = o2 * i2 if rank >= max(o2, i2) / 2 else rank * (o2 + i2)
        return o1 * i1 + w2                          # w1 (full) kron w2 (full or rank-r)
    raise AssertionError(f"no formula for {adapter}")


def expected_trainable(case, model):
    part = trained_part(model, case.family)
    if case.adapter == "none":
        return sum(p.numel() for p in part.parameters() if p.is_floating_point())
    adapter = get_adapter(case.adapter)
    names = target_names(part, adapter.targets(case.family, case.targets))
    return sum(_module_params(case.adapter, case.rank, part.get_submodule(n)) for n in names)


TWINS = list({c.tiny_twin().id: c.tiny_twin() for c in CASES}.values())


@pytest.mark.parametrize("case", TWINS, ids=str)
def test_tiny_twin_trains_only_its_adapter_by_its_formula_and_loss_is_finite(case):
    family = case.family
    model = build_model(case.model, case.quantization, fill=True)
    expected = expected_trainable(case, model)
    model = prepare_for_training(model, family, case.checkpointing, case.attention)
    model = apply_adapter(model, family, case.adapter, case.rank, case.targets)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert sum(p.numel() for p in trainable.values()) == expected
    if case.adapter != "none":
        library_prefix = {"loha": "hada_", "lokr": "lokr_", "ia3": "ia3_"}
        marker = "lycoris" if case.adapter.startswith("lycoris") else library_prefix.get(case.adapter, "lora_")
        assert all(marker in n for n in trainable), sorted(trainable)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    grads = {}
    for name, p in trainable.items():
        p.register_post_accumulate_grad_hook(lambda p, name=name: grads.__setitem__(name, p.grad.abs().sum()))
    train_mode(model, trained_part(model, family))
    optimizer = make_optimizer(model, case.optimizer)
    loss = STEPS[family](model, optimizer, case.batch_size, case.size, "cpu", case.autocast)
    assert math.isfinite(loss.item())
    assert set(grads) == set(trainable)
    frozen_changed = [n for n, p in model.named_parameters() if not p.requires_grad and not torch.equal(p, before[n])]
    assert frozen_changed == []
    assert any(not torch.equal(p, before[n]) for n, p in trainable.items())


def test_lycoris_targets_only_the_named_modules_and_its_preset_does_not_leak():
    from lycoris import LycorisNetwork

    before = (list(LycorisNetwork.TARGET_REPLACE_MODULE), list(LycorisNetwork.TARGET_REPLACE_NAME))
    model = apply_adapter(build_model("sd15-tiny"), "diffusion", "lycoris-lokr", 4)
    wrapped = {m.lora_name for m in model.unet.lycoris.loras}
    names = target_names(model.unet, get_adapter("lycoris-lokr").targets("diffusion", "attention"))
    assert len(wrapped) == len(names) and all("attn" in n for n in wrapped)
    assert (LycorisNetwork.TARGET_REPLACE_MODULE, LycorisNetwork.TARGET_REPLACE_NAME) == before


@pytest.mark.parametrize("field, value, message", [
    ("model", "gpt-5", "unknown model 'gpt-5'; valid choices: llama-7b"),
    ("adapter", "lorax", "unknown adapter 'lorax'; valid choices: none, lora, dora"),
    ("quantization", "int3", "unknown quantization 'int3'; valid choices: fp32, fp16, bf16, nf4-dq"),
    ("optimizer", "sgd", "unknown optimizer 'sgd'; valid choices: adamw, adamw8bit"),
    ("targets", "mlp", "targets 'mlp' match no layer of llama-tiny; valid choices: all-linear, attention, "
                       "or module names: down_proj, gate_proj, k_proj, lm_head, o_proj, q_proj, up_proj, v_proj"),
    ("budget", "12", "budget '12': malformed size '12': expected a number and a unit"),
    ("gpu", "v200", "unknown GPU profile 'v200'"),
])
def test_bad_case_names_the_value_and_choices(field, value, message):
    kwargs = {"model": "llama-tiny", field: value}
    with pytest.raises(ValueError, match=message):
        Case(**kwargs)


def test_case_ids_are_readable_and_unique():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))
    assert "llama-7b-lora-r8-nf4-dq-bs1-seq512" in ids
    assert "llama-7b-lora-r8-nf4-dq-gc-paged-adamw8bit-bs1-seq512" in ids
    assert "sd15-lycoris-locon-r4-fp32-bs1-512px" in ids
