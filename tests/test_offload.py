"""FSDP2 CPU offload under the simulator (fixtures/offload.py): the sharded parameters, their
gradients and the AdamW state live on the host and are not device memory; the device holds the
H2D copies of the shards each all-gather reads, the all-gathered blocks, and the reduce-scatter
buffers; checked against arithmetic from FSDP2's source and against a real gloo run."""
from __future__ import annotations

from collections import Counter

import pytest
import torch

from fixtures.cases import Case
from fixtures.fit import simulate
from fixtures.multiprocess import run_ranks
from fixtures.parallel import Layout, fsdp_local_numel, fsdp_shard_numel
from pytest_vram.tracker import StorageTracker
from test_parallel import simulate_rank, tiny_shapes

FP32 = 4


def offloaded_rank(ranks: int, rank: int = 0, **kwargs):
    places: dict = {}
    got, tracker = simulate_rank(Layout(ranks, "fsdp", cpu_offload=True, rank=rank), from_meta=True,
                                 places=places, **kwargs)
    return got, places, tracker


def test_a_meta_tensor_labeled_is_not_counted():
    """Meta tensors (the simulated host) hold no memory: labelling one counts nothing."""
    host, device = torch.empty(1000, device="meta"), torch.empty(10)
    with StorageTracker() as tracker:
        tracker.label(host, "trainable_params")
        tracker.label(device, "trainable_params")
    assert tracker.live_bytes == 40 and tracker.breakdown_at_peak()["trainable_params"] == 40


# rank 0 only: a non-zero rank of an unevenly sharded model simulated earlier in the same process
# breaks a later rank 0 (DTensor's sharding caches key meshes without the local rank; reported)
@pytest.mark.parametrize("ranks, rank", [(2, 0), (3, 0)])
def test_offloaded_parameters_gradients_and_optimizer_state_hold_no_device_bytes(ranks, rank):
    """On the device: no parameter, no gradient, and of AdamW's state only its per-parameter
    ``step`` counters (``torch.tensor(0.0)``, host memory on CUDA too but counted by the
    simulator: the gap pytest_vram.sim.optimizers states). On the host: the padded shard of each
    parameter (FSDP2's ``reset_sharded_param``), its gradient and two AdamW moments
    (``zeros_like`` of the rank's shard; rank 0's shard is the 0th chunk, the padded size)."""
    shapes = tiny_shapes()
    _, places, _ = offloaded_rank(ranks, rank)
    assert places["device"] == {"trainable_params": 0, "frozen_params": 0, "gradients": 0,
                                "optimizer_state": len(shapes) * FP32}
    padded = sum(fsdp_local_numel(s, ranks) for s in shapes.values()) * FP32
    own = sum(fsdp_shard_numel(s, ranks, rank) for s in shapes.values()) * FP32
    assert places["host"] == {"trainable_params": padded, "frozen_params": 0, "gradients": own,
                              "optimizer_state": 2 * own}


@pytest.fixture
def copies(monkeypatch):
    """Every ``Tensor.to`` between the simulated host (meta) and the device (cpu) of a plain
    tensor: (direction, bytes). FSDP2 makes its H2D and D2H copies with ``.to``."""
    seen: list[tuple[str, int]] = []
    to = torch.Tensor.to

    def spy(self, *args, **kwargs):
        out = to(self, *args, **kwargs)
        if type(self).__name__ != "DTensor" and out.device != self.device:
            seen.append((f"{self.device.type}->{out.device.type}", out.numel() * out.element_size()))
        return out
    monkeypatch.setattr(torch.Tensor, "to", spy)
    return seen


@pytest.mark.parametrize("reshard", [True, False])
def test_each_all_gather_reads_an_h2d_copy_and_each_gradient_leaves_by_d2h(copies, reshard):
    """FSDP2 copies every padded shard to the device before its all-gather
    (``FSDPParam.all_gather_inputs``): the root's parameters once (the root is not resharded
    after forward), each layer's twice with reshard_after_forward=True (forward and backward),
    once without. To the host go each loaded shard, padded (the post-load hook's copy,
    ``reset_sharded_param``), and each reduce-scattered gradient, by its unpadded shard size
    (``foreach_reduce``). N=3 pads the layers' shards."""
    ranks = 3
    shapes = tiny_shapes()
    simulate_rank(Layout(ranks, "fsdp", cpu_offload=True, reshard=reshard), from_meta=True)
    gathers = {n: 1 if ".layers." not in n else (2 if reshard else 1) for n in shapes}
    h2d = Counter({})
    for name, shape in shapes.items():
        h2d[fsdp_local_numel(shape, ranks) * FP32] += gathers[name]
    d2h = Counter([fsdp_local_numel(s, ranks) * FP32 for s in shapes.values()]
                  + [fsdp_shard_numel(s, ranks, 0) * FP32 for s in shapes.values()])
    assert Counter(n for d, n in copies if d == "meta->cpu") == h2d
    assert Counter(n for d, n in copies if d == "cpu->meta") == d2h


def test_offload_lowers_the_rank_peak_by_what_it_moves_off_the_device():
    """The suite's case with ``cpu_offload``: after creation the device holds no parameter, and
    after the step neither gradients nor AdamW moments (the full fine-tune of the tiny model on
    2 ranks); the step's peak is below the same case without offload."""
    base = Case("llama-tiny", "none", "fp32", seq_len=64, ranks=2, strategy="fsdp")
    kept, offloaded = simulate(base), simulate(Case(**{**base.__dict__, "cpu_offload": True}))
    assert offloaded.phases["creation"].breakdown["trainable_params"] == 0
    assert kept.phases["creation"].breakdown["trainable_params"] > 0
    assert offloaded.phases["step"].peak < kept.phases["step"].peak
    assert offloaded.phases["step"].allocated < kept.phases["step"].allocated


@pytest.mark.slow
def test_simulated_offload_rank_equals_a_real_two_process_gloo_run_to_the_byte():
    """Two real processes with CPUOffloadPolicy (gloo, CPU tensors: host and device are one
    memory there): every rank's parameter, gradient and optimizer bytes equal the simulated
    rank's host + device bytes, to the byte; its peaks (host and device together) are at least
    the simulated device peaks."""
    real = run_ranks(2, "fsdp", "llama-tiny", from_meta=True, options={"cpu_offload": True})
    for rank, figures in enumerate(real):
        simulated, places, _ = offloaded_rank(2, rank)
        for peak in ("setup_peak", "step_peak"):
            assert figures.pop(peak) >= simulated.pop(peak)
        assert {k: figures[k] for k in places["device"]} == {k: places["device"][k] + places["host"][k]
                                                          for k in places["device"]}


@pytest.mark.slow
def test_offloaded_qlora_rank_equals_a_real_two_process_gloo_run_to_the_byte():
    """FSDP+QLoRA with CPUOffloadPolicy (NF4 stored as bf16, LoRA on q/v, loaded from meta):
    every rank's packed NF4 shards, LoRA shards, gradients and AdamW state of a real 2-process
    gloo run equal the simulated rank's host + device bytes, and its QuantState bytes the
    simulated rank's; in the simulated rank the packed shards and the LoRA state are on the host,
    and only AdamW's ``step`` counters on the device (the QuantState is module metadata, not a
    parameter: FSDP2 does not move it)."""
    from test_fsdp_qlora import QLORA

    real = run_ranks(2, "fsdp", "llama-tiny", **QLORA, from_meta=True, options={"cpu_offload": True})
    for rank, figures in enumerate(real):
        simulated, places, _ = offloaded_rank(2, rank, **QLORA)
        for peak in ("setup_peak", "step_peak"):
            assert figures.pop(peak) >= simulated.pop(peak)
        assert {k: figures[k] for k in places["device"]} == {k: places["device"][k] + places["host"][k]
                                                          for k in places["device"]}
        assert figures["quant_state"] == simulated["quant_state"] > 0
        assert places["host"]["frozen_params"] > 0 and places["host"]["trainable_params"] > 0
        assert {k: v for k, v in places["device"].items() if k != "optimizer_state"} == \
            {"trainable_params": 0, "frozen_params": 0, "gradients": 0}
