"""FSDP1 (``FullyShardedDataParallel``, flat parameters) as Answer.AI's fsdp_qlora train.py runs
it (fixtures/fsdp1.py), one rank in the fake process group: the simulated rank against a real
CPU run of the same rank in the same fake group (real tensors, the cpu backend's tracker),
allocation by allocation, and the flat parameters' shards against FSDP1's arithmetic."""
from __future__ import annotations

import contextlib
import math

import pytest
import torch
from pytest_vram.backends import CpuBackend
from pytest_vram.sim.backend import SimBackend
from pytest_vram.sim.process_group import fake_process_group

from fixtures.adapters import apply_adapter
from fixtures.cases import Case
from fixtures.fsdp1 import apply_fsdp1, quantize_off_device
from fixtures.models import build_model
from fixtures.training import llm_step, make_optimizer, prepare_for_training


def run_rank(simulated: bool, model_name: str = "llama-tiny", quantization: str = "fp32", adapter: str = "lora",
             checkpointing: bool = False, world: int = 2, rank: int = 0, steps: int = 2) -> dict:
    """One FSDP1 rank, loaded as train.py loads it (built on meta, 4-bit weights quantized on the
    device, materialized by FSDP1's ``param_init_fn``), then ``steps`` LLM steps. Returns the
    tracker's figures after loading, after wrapping and after each step, the allocations
    after wrapping, and the wrapped model's flat parameters (their local numels)."""
    backend = SimBackend(None, gpu_models=False) if simulated else CpuBackend(None)
    out: dict = {}
    with fake_process_group(world, rank):
        backend.start()
        tracker = backend.tracker
        try:
            model = build_model(model_name, quantization, "meta")
            model = prepare_for_training(model, "llm", False, sharded=True)
            model = quantize_off_device(model, "cpu")
            out["loaded"] = tracker.live_bytes
            if adapter != "none":
                model = apply_adapter(model, "llm", adapter, 8, autocast_adapter_dtype=False)
            model = apply_fsdp1(model, "cpu", checkpointing)
            out["wrapped"] = (tracker.live_bytes, tracker.peak_bytes)
            out["flat_numels"] = [p.numel() for p in model.parameters()]
            model.train()
            optimizer = make_optimizer(model)
            tracker.mark()
            for step in range(steps):
                llm_step(model, optimizer, 1, 32, "cpu")
                out[f"step{step}"] = (tracker.live_bytes, tracker.peak_bytes)
            out["allocations"] = tracker.allocations()
        finally:
            backend.stop()
    return out


@pytest.mark.parametrize("quantization, checkpointing", [("fp32", False), ("nf4-dq-bf16", True)])
def test_simulated_fsdp1_rank_equals_a_real_cpu_rank_allocation_by_allocation(quantization, checkpointing):
    """LoRA under FSDP1 with train.py's policy (a unit per LoRA linear and per decoder layer, the
    root holding embeddings, norm and head), fp32, and QLoRA (NF4 stored as bf16) with train.py's
    reentrant checkpointing: every figure and every allocation of two steps is the real run's.
    Without distinct simulated data pointers (pytest_vram/sim/data_pointers.py) the simulated
    rank kept the frozen units' unsharded flat parameters after backward (FSDP1's
    ``_catch_all_reshard`` took them for resharded): 463,616 bytes more after the fp32 step."""
    model = "llama-tiny" if quantization == "fp32" else "llama-tiny-nf4"
    real = run_rank(False, model, quantization, checkpointing=checkpointing)
    simulated = run_rank(True, model, quantization, checkpointing=checkpointing)
    assert simulated == real
    assert real["step0"][1] > real["wrapped"][0] and len(real["allocations"]) > 100   # the steps ran


@pytest.mark.parametrize("world", [2, 3])
def test_each_flat_parameter_is_sharded_to_ceil_numel_over_world(world):
    """FSDP1 flattens each unit's parameters into one FlatParameter (``use_orig_params=False``:
    no alignment padding) and keeps ``ceil(numel / N)`` elements of it on every rank, the last
    shards padded (``FlatParamHandle._get_shard``: ``flatten(tensor).chunk(N)``, padded to the
    0th chunk; torch/distributed/fsdp/_flat_param.py). With train.py's policy the units are each
    LoRA linear, each decoder layer (what is left of it) and the root."""
    shapes = {n: p.numel() for n, p in apply_adapter(build_model("llama-tiny", "fp32", "meta"), "llm", "lora", 8,
                                                       autocast_adapter_dtype=False).named_parameters()}
    lora = [n for n in shapes if "lora_" in n]
    layers = [sum(v for n, v in shapes.items() if f"layers.{i}." in n and "lora_" not in n) for i in range(2)]
    root = sum(v for n, v in shapes.items() if "layers." not in n)
    units = [shapes[n] for n in lora] + layers + [root]
    got = run_rank(True, world=world, steps=0)["flat_numels"]
    assert sorted(got) == sorted(math.ceil(u / world) for u in units)
    if world == 3:
        assert sum(got) * world > sum(units)   # the padding shows


def test_a_fake_tensor_has_a_data_pointer_of_its_own_under_the_simulator():
    """As on a device: distinct storages, distinct nonzero addresses; a view is its base's
    address plus its offset in bytes; an emptied storage (FSDP's ``resize_(0)``) and an empty
    tensor point nowhere (0). Outside the simulator torch's own answer (0 for a fake) is back."""
    from torch._subclasses.fake_tensor import FakeTensor

    backend = SimBackend(None, gpu_models=False)
    backend.start()
    try:
        a, b = torch.empty(10), torch.empty(10)
        assert a.data_ptr() != b.data_ptr() and a.data_ptr() > 0
        assert a.untyped_storage().data_ptr() == a.data_ptr()
        assert a[3:].data_ptr() == a.data_ptr() + 3 * 4
        assert torch.empty(0).data_ptr() == 0
        a.untyped_storage().resize_(0)
        assert a.untyped_storage().data_ptr() == 0
    finally:
        backend.stop()
    assert "data_ptr" not in FakeTensor.__dict__


def test_fsdp1_is_a_strategy_of_llm_cases_only():
    """One clear error for what FSDP1 cannot shard: decoder layers of LLMs only, and a 4-bit
    weight only packed into a float storage (FSDP1 flattens a unit's tensors into one dtype)."""
    case = Case("llama-7b", "lora", "nf4-dq-bf16", ranks=2, strategy="fsdp1", gpu="rtx3090")
    assert case.layout.strategy == "fsdp1" and "-fsdp1x2-" in case.id   # not "fsdp12": 12 ranks of FSDP2
    assert "-fsdp2-" in Case("llama-7b", "lora", "bf16", ranks=2, strategy="fsdp").id
    with pytest.raises(ValueError, match="strategy 'fsdp1' cannot apply to 'sd15'"):
        Case("sd15", "lora", "fp16", ranks=2, strategy="fsdp1")
    with pytest.raises(ValueError, match="strategy 'fsdp1' with quantization 'nf4-dq' cannot be"):
        Case("llama-7b", "lora", "nf4-dq", ranks=2, strategy="fsdp1")
    with pytest.raises(ValueError, match="unknown strategy 'fsdp3'; valid choices: none, fsdp, fsdp1, ddp"):
        Case("llama-7b", "lora", "bf16", ranks=2, strategy="fsdp3")


def test_the_trainable_parameter_count_is_the_models_not_the_ranks_shard():
    """``vram.track`` counts what the model trains: a FlatParameter stands for every parameter it
    flattens (its unsharded, unpadded size), not for this rank's shard of them, as a DTensor's
    global size does under FSDP2."""
    from pytest_vram.meter import Meter

    backend = SimBackend(None, gpu_models=False)
    with fake_process_group(2, 0):
        backend.start()
        try:
            model = apply_adapter(build_model("llama-tiny", "fp32", "meta"), "llm", "lora", 8,
                                  autocast_adapter_dtype=False)
            expected = sum(p.numel() for p in model.parameters() if p.requires_grad)
            model = apply_fsdp1(model, "cpu", checkpointing=False)
            meter = Meter(backend, None, None)
            meter.track(model)
        finally:
            backend.stop()
    assert meter.trainable_params == expected == 4 * 2 * 8 * 64
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == expected // 2


def test_transformers_437_llama_carries_per_layer_rotary_caches_whole_on_every_fsdp1_rank():
    """Under ``llama_437`` every decoder layer's attention holds 4.37.2's ``inv_freq``, ``cos_cached``
    and ``sin_cached`` ([positions, head_dim], fp32 as train.py builds them): on an FSDP1 rank
    they are buffers, not sharded, so the rank holds all of them on top of its shards; outside
    the context today's LLaMA has none."""
    from fixtures.transformers_2024 import llama_437, rotary_cache_bytes

    with llama_437(512, torch.float32):
        model = build_model("llama-tiny", "fp32", "meta")
    layers = model.model.layers
    assert all(layer.self_attn.rotary_emb.cos_cached.shape == (512, 16) for layer in layers)
    assert sum(b.numel() * b.element_size() for layer in layers for b in layer.buffers()) \
        == len(layers) * rotary_cache_bytes(16, 512) == 2 * (4 * 8 + 2 * 512 * 16 * 4)
    assert not hasattr(build_model("llama-tiny", "fp32", "meta").model.layers[0].self_attn, "rotary_emb")
    plain = run_rank(True, steps=0)
    with llama_437(512, torch.float32):
        with_caches = run_rank(True, steps=0)
    assert with_caches["wrapped"][0] - plain["wrapped"][0] == len(layers) * rotary_cache_bytes(16, 512)
    with pytest.raises(ValueError, match="rope_type 'linear'; valid choices: 'default'"):
        from transformers.models.llama import modeling_llama

        config = model.config
        config.rope_scaling = {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}
        with llama_437():
            modeling_llama.LlamaAttention(config, 0)


def wrap_log(simulated: bool, recorded: bool = False, profile=None, model_name: str = "llama-tiny",
             quantization: str = "fp32", round_trip: bool = False) -> dict:
    """The tiny twin loaded (its 4-bit weights quantized on the device), given LoRA and wrapped by
    FSDP1 as rank 0 of 2: every storage allocated and freed during the wrapping (signed bytes, in
    order), the units' bytes, the adapted QuantStates and, under the simulator with an allocator
    model, the blocks waiting for a stream at each host synchronization."""
    from pytest_vram.profiles import get_profile

    from fixtures.fsdp1 import _adapted_quant_states, nccl_records_streams, quant_states_round_trip

    backend = SimBackend(get_profile(profile) if profile else None) if simulated else CpuBackend(None)
    out: dict = {"waiting": []}
    contexts = contextlib.ExitStack()
    if recorded:
        contexts.enter_context(nccl_records_streams())
    if round_trip:
        contexts.enter_context(quant_states_round_trip())
    with fake_process_group(2, 0), contexts:
        backend.start()
        try:
            model = prepare_for_training(build_model(model_name, quantization, "meta"), "llm", False, sharded=True)
            model = quantize_off_device(model, "cpu")
            model = apply_adapter(model, "llm", "lora", 8, autocast_adapter_dtype=False)
            out["units"] = _unit_tensor_bytes(model)
            allocator = getattr(backend, "allocator", None)
            streams = None
            if allocator is not None:
                class Streams:   # the backend's, watched
                    record_stream = backend.record_stream

                    def synchronize(self):
                        if allocator._pending:
                            out["waiting"].append(sorted(s.blocks[_block(s, o)][1] for s, o in allocator._pending))
                        backend.synchronize()
                streams = Streams()
            backend.tracker.mark()
            apply_fsdp1(model, "cpu", checkpointing=False, streams=streams)
            out["log"] = list(backend.tracker._log)
            out["states"] = [(s.absmax, s.offset, s.state2.absmax, s.state2.code) for s in _adapted_quant_states(model)]
        finally:
            backend.stop()
    return out


def _block(seg, offset):
    from pytest_vram.sim.allocator import _block_index

    return _block_index(seg, offset)


def _unit_tensor_bytes(model) -> list[int]:
    """Bytes of each FSDP1 unit's parameters and buffers (train.py's policy on the tiny twin: each
    LoRA linear, each decoder layer's rest, the root's rest), in the order FSDP1 wraps them."""
    sizes = {n: t.numel() * t.element_size() for n, t in [*model.named_parameters(), *model.named_buffers()]}
    lora = [n for n in sizes if "lora_" in n]
    layers = [sum(v for n, v in sizes.items() if f"layers.{i}." in n and "lora_" not in n) for i in range(2)]
    root = sum(v for n, v in sizes.items() if "layers." not in n)
    per_layer = [[sizes[n] for n in lora if f"layers.{i}." in n] + [layers[i]] for i in range(2)]
    return [b for layer in per_layer for b in layer] + [root]


def test_fsdp1s_broadcasts_spelled_out_allocate_what_torchs_broadcast_coalesced_does():
    """fixtures/fsdp1.py replays ``dist._broadcast_coalesced`` in Python (to record its flat
    tensors on the collective's stream): on a real CPU rank it allocates and frees what torch's
    C++ (comm.cpp) does, storage by storage, in the same order."""
    assert wrap_log(False, recorded=True)["log"] == wrap_log(False, recorded=False)["log"]


def test_each_broadcast_block_waits_for_rank_0s_next_blocking_copy():
    """With the 2024 NCCL process group's recordStream, each unit's broadcast blocks (one bucket
    here: a unit's tensors, flattened; a LoRA unit's one weight broadcast as itself) are freed but
    not reusable until rank 0 next waits for the device: its next unit's first host-to-device copy,
    or the barrier after wrapping. Without the recording nothing waits, and the storages allocated
    are the same either way."""
    from pytest_vram.sim.allocator import round_size

    recorded = wrap_log(True, recorded=True, profile="rtx3090")
    assert recorded["waiting"] == [[round_size(b)] for b in recorded["units"]]
    plain = wrap_log(True, recorded=False, profile="rtx3090")
    assert plain["waiting"] == [] and plain["log"] == recorded["log"]


def test_rank_0s_adapted_quant_states_leave_the_device_with_peft_and_come_back_with_their_unit():
    """peft <= 0.11's ``self.to(weight.device)`` moved each adapted 4-bit layer's QuantState
    (absmax, offset, nested absmax, nested code: bitsandbytes 0.43's ``QuantState.to``) to rank 0's
    CPU; FSDP1 moves it back with the layer's weight. During wrapping, then, each of those tensors is
    freed once and allocated once more than without the round trip, and the simulated rank does
    what a real CPU rank does, storage by storage."""
    from collections import Counter

    args = {"model_name": "llama-tiny-nf4", "quantization": "nf4-dq-bf16"}
    real = wrap_log(False, round_trip=True, **args)
    simulated = wrap_log(True, round_trip=True, **args)
    assert [d for _, d in simulated["log"]] == [d for _, d in real["log"]]
    plain = wrap_log(True, **args)
    sizes = [t.numel() * t.element_size() for state in simulated["states"] for t in state]
    assert simulated["states"] and all(t.device.type != "meta" for state in simulated["states"] for t in state)
    more = Counter(d for _, d in simulated["log"])
    more.subtract(Counter(d for _, d in plain["log"]))
    assert +more == Counter(sizes) + Counter(-n for n in sizes)
