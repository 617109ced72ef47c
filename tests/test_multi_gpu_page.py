"""The committed multi-GPU results and page: the page is what its command makes, and the
committed per-rank weights are FSDP2's padded shards of the full-size model, byte for byte."""
from __future__ import annotations

from pathlib import Path

import pytest

from fixtures.multi_gpu_page import page
from fixtures.parallel import fsdp_local_numel
from pytest_vram.history import load

ROOT = Path(__file__).resolve().parents[1]
HISTORY = ROOT / "results" / "sim-multi-gpu.json"


def test_committed_page_is_what_the_command_makes():
    expected = page("results/sim-multi-gpu.json")
    assert (ROOT / "docs" / "multi-gpu.md").read_text() == expected


@pytest.mark.slow
@pytest.mark.parametrize("case, ranks", [("llama-13b-lora-r8-bf16-gc-fsdp8-bs1-seq512", 8),
                                         ("llama-13b-lora-r8-bf16-fsdp4-bs1-seq512", 4)])
def test_committed_rank_holds_fsdp2_padded_shard_of_the_frozen_base(case, ranks):
    """frozen_weights at the step's peak = every frozen bf16 parameter's padded shard (dim 0
    chunked over the ranks) plus the unsharded buffers (rotary frequencies), from the 13B config."""
    from fixtures.adapters import apply_adapter
    from fixtures.models import build_model

    record = next(r for r in load(HISTORY).records if r["case"] == case)
    model = apply_adapter(build_model("llama-13b", "bf16", "meta"), "llm", "lora", 8)
    frozen = sum(fsdp_local_numel(p.shape, ranks) * p.element_size()
                 for p in model.parameters() if not p.requires_grad)
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    assert record["phases"]["step"]["breakdown"]["frozen_weights"] == frozen + buffers


def test_the_suite_has_every_fsdp2_case_issue_18_lists():
    """LLaMA-13B and a 70B-class model, LoRA and QLoRA, under FSDP2 on 2, 4 and 8 ranks, each also
    without checkpointing and with CPU offload; DDP of the 7B QLoRA case; SDXL LoRA under DDP."""
    from fixtures.multi_gpu import MULTI_GPU_CASES
    from fixtures.quantization import get_quantization

    for model in ("llama-13b", "llama-2-70b"):
        for qlora in (False, True):
            cases = [c for c in MULTI_GPU_CASES if c.model == model and c.strategy == "fsdp"
                     and (get_quantization(c.quantization).bits == 4) == qlora]
            label = f"{model} {'QLoRA' if qlora else 'LoRA'}"
            assert {c.ranks for c in cases} >= {2, 4, 8}, label
            assert {c.checkpointing for c in cases} == {False, True}, label
            assert {c.cpu_offload for c in cases} == {False, True}, label
    ids = {c.id for c in MULTI_GPU_CASES}
    assert {"llama-7b-lora-r8-nf4-dq-gc-ddp2-bs1-seq512", "sdxl-lora-r4-fp16-autocast-ddp2-bs1-1024px"} <= ids
