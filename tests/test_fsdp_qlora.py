"""QLoRA under FSDP2 as FSDP+QLoRA recipes run it: NF4 weights packed into a float
``quant_storage`` (bf16), sharded by FSDP2 like any parameter, their quantization state kept
whole on every rank; only the LoRA adapters train. Checked against arithmetic on the packed
shapes and against a real multi-process gloo run."""
from __future__ import annotations

import pytest
import torch

from fixtures.cases import Case
from fixtures.models import build_model
from fixtures.multi_gpu import single_gpu
from fixtures.multiprocess import run_ranks
from fixtures.parallel import Layout, fsdp_local_numel
from test_parallel import simulate_rank

QLORA = dict(quantization="nf4-dq-bf16", adapter="lora")
BF16 = 2


def test_a_skeleton_materialized_onto_meta_keeps_its_4bit_weights():
    """Built on meta to be sharded, a 4-bit layer's weight stays a ``Params4bit`` packed into
    bf16 (two 4-bit codes a byte: 64 x 64 weights are 1,024 bf16 elements), so peft still
    dispatches its 4-bit LoRA layer. (Before the fix the materializer re-made it a plain
    parameter and peft failed on it.)"""
    import bitsandbytes as bnb

    model = build_model("llama-tiny", "nf4-dq-bf16", "meta")
    layer = model.model.layers[0].self_attn.q_proj
    assert isinstance(layer, bnb.nn.Linear4bit)
    assert isinstance(layer.weight, bnb.nn.Params4bit)
    assert (tuple(layer.weight.shape), layer.weight.dtype) == ((64 * 64 // 4, 1), torch.bfloat16)


def _frozen_shapes() -> list[tuple[torch.Size, int]]:
    model = build_model("llama-tiny", "nf4-dq-bf16", "meta")
    return [(p.shape, p.element_size()) for p in model.parameters()]


@pytest.mark.parametrize("ranks", [2, 4])
def test_fsdp_shards_the_packed_nf4_bytes_and_keeps_the_quant_state_whole(ranks):
    """Per rank: the frozen base (packed NF4 weights and bf16 embeddings/norms/head) is FSDP2's
    padded shard of each, 1/N of one GPU's bytes; the QuantState (absmax, nested absmax,
    codes) is not a parameter and stays whole on every rank; the bf16 LoRA adapters and their
    gradients are sharded too."""
    single, _ = simulate_rank(Layout(1, "none"), **QLORA)
    got, _ = simulate_rank(Layout(ranks, "fsdp"), **QLORA, from_meta=True)
    shard = sum(fsdp_local_numel(shape, ranks) * size for shape, size in _frozen_shapes())
    assert got["frozen_params"] == shard == single["frozen_params"] // ranks
    assert got["quant_state"] == single["quant_state"] > 0
    lora = got["trainable_params"]
    assert lora == got["gradients"] == 4 * 2 * 8 * 64 * BF16 // ranks   # q, v x 2 layers: A and B, bf16


@pytest.mark.parametrize("reshard, gathers", [(True, 2 * 2), (False, 2)])
def test_fsdp_all_gathers_each_layers_packed_weights(reshard, gathers):
    """Forward (and, resharded, backward again) all-gathers one decoder layer's shards, packed
    NF4 weights included, into one flat buffer of N x their padded sizes (all bf16: the adapters
    stay in the storage dtype); resharded, the step's peak (in backward) holds one such buffer."""
    ranks = 2
    layer = [(s, e) for (s, e), name in zip(_frozen_shapes(), _names()) if name.startswith("model.layers.0.")]
    lora = 2 * (8 * 64 + 64 * 8)   # q_proj and v_proj: lora_A (8 x 64), lora_B (64 x 8), bf16
    flat = ranks * (sum(fsdp_local_numel(s, ranks) * e for s, e in layer) + lora * BF16 // ranks)
    _, tracker = simulate_rank(Layout(ranks, "fsdp", reshard=reshard), **QLORA, from_meta=True)
    assert tracker.allocations().count(flat) == gathers
    if reshard:
        assert flat in tracker.sizes_at_peak().values()


def _names() -> list[str]:
    return [n for n, _ in build_model("llama-tiny", "nf4-dq-bf16", "meta").named_parameters()]


@pytest.mark.slow
@pytest.mark.parametrize("from_meta", [False, True])
def test_simulated_qlora_rank_equals_a_real_two_process_gloo_run_to_the_byte(from_meta):
    """Two real processes (gloo, real CPU tensors, bitsandbytes' CPU kernels): every rank's
    packed-weight shard, LoRA parameters, gradients, AdamW state and QuantState bytes equal
    the simulated rank's, built whole then sharded or loaded and quantized shard by shard.
    Peaks held from below (gloo frees collective buffers on its own thread: tests/test_parallel.py)."""
    real = run_ranks(2, "fsdp", "llama-tiny", **QLORA, from_meta=from_meta)
    for rank, figures in enumerate(real):
        simulated, _ = simulate_rank(Layout(2, "fsdp", rank=rank), **QLORA, from_meta=from_meta)
        for peak in ("setup_peak", "step_peak"):
            assert figures.pop(peak) >= simulated.pop(peak)
        assert figures == simulated
        assert figures["quant_state"] > 0 and figures["frozen_params"] > 0


def test_fsdp_takes_only_quantizations_it_can_shard():
    with pytest.raises(ValueError, match="valid choices with 'fsdp': fp32, fp16, bf16, nf4-dq-bf16$"):
        Case("llama-7b", "lora", "nf4", ranks=2, strategy="fsdp")
    with pytest.raises(ValueError, match="quantization 'nf4-dq-bf16' .* is for strategy 'fsdp' only, not 'ddp'"):
        Case("llama-7b", "lora", "nf4-dq-bf16", ranks=2, strategy="ddp")
    assert Case("llama-7b", "lora", "nf4-dq-bf16", ranks=2, strategy="fsdp").id == \
        "llama-7b-lora-r8-nf4-dq-bf16-fsdp2-bs1-seq512"


def test_a_qlora_rank_is_compared_with_qlora_on_one_gpu():
    """One GPU packs NF4 in uint8 (the same packed bytes); a 70B QLoRA model fits one 80 GB card
    (35 GB of packed weights), so its baseline is no expected OOM, unlike 70B in bf16."""
    case = Case("llama-2-70b", "lora", "nf4-dq-bf16", gpu="rtx4090", ranks=2, strategy="fsdp", checkpointing=True)
    base = single_gpu(case)
    assert (base.quantization, base.ranks, base.strategy, base.expect_oom) == ("nf4-dq", 1, "none", False)
    assert single_gpu(Case("llama-2-70b", "lora", "bf16", gpu="a100_80gb", ranks=8, strategy="fsdp")).expect_oom


@pytest.mark.slow
@pytest.mark.parametrize("ranks", [2, 4, 8])
def test_committed_qlora_rank_holds_its_shard_of_the_packed_weights_and_the_whole_quant_state(ranks):
    """In the committed LLaMA-13B QLoRA records (results/sim-multi-gpu.json): at the step's peak
    a rank's 4-bit weights are FSDP2's padded shards of the packed bf16 weights (13B config,
    arithmetic), plus the same quant state bytes as the single GPU's; its frozen weights are the
    padded shards of the unquantized bf16 weights plus the (unsharded) rotary buffers."""
    import bitsandbytes as bnb
    from pytest_vram.history import load

    records = {r["case"]: r for r in load("results/sim-multi-gpu.json").records}
    rank = records[f"llama-13b-lora-r8-nf4-dq-bf16-gc-fsdp{ranks}-bs1-seq512"]["phases"]["step"]["breakdown"]
    single = records["llama-13b-lora-r8-nf4-dq-gc-bs1-seq512"]["phases"]["step"]["breakdown"]
    model = build_model("llama-13b", "nf4-dq-bf16", "meta")
    packed = {id(m.weight) for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)}
    params = list(model.parameters())
    shard = sum(fsdp_local_numel(p.shape, ranks) * p.element_size() for p in params if id(p) in packed)
    full = sum(p.numel() * p.element_size() for p in params if id(p) in packed)
    assert rank["quantized_weights"] - shard == single["quantized_weights"] - full > 0
    frozen = sum(fsdp_local_numel(p.shape, ranks) * p.element_size() for p in params if id(p) not in packed)
    assert rank["frozen_weights"] == frozen + sum(b.numel() * b.element_size() for b in model.buffers())


def test_the_multi_gpu_anchor_states_the_case_it_replays():
    """The anchor's fields (shown on docs/accuracy.md) and the case that replays it say the same
    setup: GPU, LoRA rank and targets, batch, sequence length, checkpointing, 2 ranks."""
    from fixtures.anchors import get_anchor
    from fixtures.multi_gpu import ANCHOR_CASES, ANCHOR_LIBRARIES

    assert set(ANCHOR_LIBRARIES) <= set(ANCHOR_CASES)
    for anchor_id, case in ANCHOR_CASES.items():
        anchor = get_anchor(anchor_id)
        assert anchor.recipe == "multi_gpu_case" and anchor.replayed
        assert (case.gpu, case.model, case.checkpointing) == (anchor.gpu, anchor.model, anchor.checkpointing)
        assert (case.rank, case.targets.split(",")) == (anchor.adapter["r"], anchor.adapter["target_modules"])
        assert (case.batch_size, case.seq_len) == (anchor.recipe_args["batch_size"], anchor.recipe_args["seq_len"])
        assert (case.ranks, case.strategy) == (2, "fsdp1")   # train.py's FullyShardedDataParallel


def test_the_meter_counts_a_sharded_4bit_weight_and_its_quant_state_as_quantized_weights():
    """``vram.track(model)`` on a sharded QLoRA rank: the packed shards (plain bf16 DTensors once
    FSDP2 owns them) and every layer's QuantState are 'quantized_weights', the bf16 embeddings,
    norms and head shards plus the rotary buffers 'frozen_weights'. (Before the fix the packed
    shards were counted as frozen bf16 weights and the QuantState as activations.)"""
    import bitsandbytes as bnb

    from fixtures.adapters import apply_adapter
    from fixtures.parallel import apply_layout, load_sharded, rank_state_bytes
    from pytest_vram.meter import Meter
    from pytest_vram.sim.backend import SimBackend
    from pytest_vram.sim.process_group import fake_process_group

    ranks = 2
    skeleton = build_model("llama-tiny", "nf4-dq-bf16", "meta")
    packed = {n for n, m in skeleton.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    shapes = {n: (p.shape, p.element_size()) for n, p in skeleton.named_parameters()}
    backend = SimBackend(None, gpu_models=False)
    with fake_process_group(ranks) as mesh:
        backend.start()
        try:
            model = build_model("llama-tiny", "nf4-dq-bf16", "meta")
            model = apply_adapter(model, "llm", "lora", 8, autocast_adapter_dtype=False)
            model = load_sharded(apply_layout(model, Layout(ranks, "fsdp"), mesh, True), "cpu", fill=False)
            backend.tracker.mark()
            Meter(backend, None, None).track(model)
            got = backend.tracker.breakdown_at_peak()
            quant_state = rank_state_bytes(model)["quant_state"]
            buffers = sum(b.numel() * b.element_size() for b in model.buffers())
        finally:
            backend.stop()
    shard = {n: fsdp_local_numel(s, ranks) * e for n, (s, e) in shapes.items()}
    four_bit = sum(b for n, b in shard.items() if n.rsplit(".", 1)[0] in packed)
    assert got["quantized_weights"] == four_bit + quant_state
    assert got["frozen_weights"] == sum(shard.values()) - four_bit + buffers
