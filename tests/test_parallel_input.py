"""Bad multi-GPU input gets one clear error naming the value and the valid choices."""
from __future__ import annotations

import pytest

from fixtures.cases import Case
from fixtures.parallel import Layout, shard_blocks
from pytest_vram.profiles import NODES, get_node, node_for
from pytest_vram.sim.process_group import check_world


@pytest.mark.parametrize("kwargs, message", [
    (dict(ranks=4, strategy="zero3"), "unknown strategy 'zero3'; valid choices: none, fsdp, fsdp1, ddp"),
    (dict(ranks=0, strategy="fsdp"), "ranks 0 is not a positive whole number"),
    (dict(ranks=2.5, strategy="fsdp"), "ranks 2.5 is not a positive whole number"),
    (dict(ranks=4), "ranks=4 needs a strategy to spread the case over them; valid choices: fsdp, fsdp1, ddp"),
    (dict(ranks=1, strategy="fsdp"), "strategy 'fsdp' with ranks=1: a parallel strategy needs at least 2"),
    (dict(ranks=2, strategy="ddp", cpu_offload=True), "cpu_offload applies to strategy 'fsdp' only"),
    (dict(ranks=2, strategy="ddp", reshard=False), "reshard=False applies to strategy 'fsdp' only"),
    (dict(ranks=2, strategy="fsdp", quantization="nf4-dq"),
     "strategy 'fsdp' with quantization 'nf4-dq' cannot be: FSDP2 would shard its bitsandbytes weight"),
    (dict(ranks=2, strategy="fsdp", quantization="int8"), "strategy 'fsdp' with quantization 'int8' cannot be"),
    (dict(ranks=2, strategy="fsdp", optimizer="adamw8bit"),
     "strategy 'fsdp' with optimizer 'adamw8bit' cannot be: bitsandbytes' 8-bit optimizers cannot step FSDP2's "
     "DTensor parameters"),
    (dict(ranks=4, strategy="fsdp", optimizer="paged-adamw8bit"), "strategy 'fsdp' with optimizer 'paged-adamw8bit'"),
])
def test_a_layout_that_cannot_be_is_one_error(kwargs, message):
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace(".", r"\.")):
        Case("llama-7b", "lora", **{"quantization": "fp16", **kwargs})


def test_fsdp_with_an_8bit_optimizer_names_the_optimizer_it_takes():
    with pytest.raises(ValueError, match=r"valid choices with 'fsdp': adamw$"):
        Case("llama-7b", "lora", "bf16", gpu="a100_80gb", ranks=2, strategy="fsdp", optimizer="adamw8bit")


def test_fsdp_cannot_apply_to_a_diffusion_pipeline():
    with pytest.raises(ValueError, match="strategy 'fsdp' cannot apply to 'sdxl' .*valid choices for it: 'none', 'ddp'"):
        Case("sdxl", "lora", "fp16", rank=4, ranks=2, strategy="fsdp")
    assert Case("sdxl", "lora", "fp16", rank=4, ranks=2, strategy="ddp").id.endswith("-ddp2-bs1-512px")


def test_a_model_without_blocks_to_shard_is_named():
    import torch

    with pytest.raises(ValueError, match="strategy 'fsdp' cannot apply to Linear: it names no blocks"):
        shard_blocks(torch.nn.Linear(2, 2))


def test_a_rank_outside_the_world_is_one_error():
    with pytest.raises(ValueError, match=r"rank 4 does not exist in a world of 4; valid choices: 0\.\.3"):
        Layout(4, "fsdp", rank=4)
    with pytest.raises(ValueError, match=r"rank -1 does not exist in a world of 2; valid choices: 0\.\.1"):
        check_world(2, -1)


def test_an_unknown_node_profile_is_one_error_with_the_choices():
    with pytest.raises(ValueError, match="unknown node profile 'a100_x3'; valid choices: " + ", ".join(NODES)):
        get_node("a100_x3")
    assert get_node("A100-80GB-x8").count == 8 and get_node("t4_x2").profile.name == "t4"
    assert node_for("rtx4090", 4).name == "rtx4090_x4" and node_for("rtx4090", 3) is None


def test_case_ids_say_the_layout():
    case = Case("llama-13b", "lora", "bf16", gpu="a100_80gb", ranks=8, strategy="fsdp", reshard=False)
    assert case.id == "llama-13b-lora-r8-bf16-fsdp8-noreshard-bs1-seq512"
    assert Case("llama-7b", "lora", "fp16").id == "llama-7b-lora-r8-fp16-bs1-seq512"   # unchanged


def test_a_single_gpu_case_records_the_parameters_it_always_had():
    """The layout fields are left out of a record at their defaults, so single-GPU records stay
    comparable with histories written before multi-GPU cases existed; a layout is recorded."""
    from pytest_vram.record import _stable

    single = _stable(Case("llama-7b", "lora", "fp16"))
    assert not {"ranks", "strategy", "cpu_offload", "reshard"} & set(single)
    sharded = _stable(Case("llama-7b", "lora", "fp16", ranks=4, strategy="fsdp", reshard=False))
    assert (sharded["ranks"], sharded["strategy"], sharded["reshard"]) == (4, "fsdp", False)
    assert "cpu_offload" not in sharded
