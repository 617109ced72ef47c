"""torchtune's QLoRA of April 2024 replayed (fixtures/torchao_nf4.py, fixtures/torchtune_2024.py).

- torchao 0.1's NF4: the round trip is NF4's, the stored tensors are what NF4Tensor stores, and the
  quantization's transient peak is its [n, 16] distance tensors, in a real CPU run and simulated alike;
- the model is torchtune's: NF4 LoRA linears on every target, bf16 adapters, no LoRA dropout,
  a RoPE cache per layer, bf16 embeddings and output;
- the replay simulated on a CPU target gives the real CPU run's bytes.
"""
import torch

from fixtures.anchors import get_anchor
from fixtures.replay import build, replay
from fixtures.torchao_nf4 import clone, get_original_weight, linear_nf4, to_nf4
from fixtures.torchtune_2024 import MAX_SEQ_LEN, LoRALinearNF4
from pytest_vram.backends import CpuBackend
from pytest_vram.meter import Meter
from pytest_vram.profiles import get_profile
from pytest_vram.sim.backend import SimBackend

A100 = get_profile("a100_80gb")
NF4_LEVELS = (-1.0, -0.6962, -0.5251, -0.3949, -0.2844, -0.1848, -0.0911, 0.0,
              0.0796, 0.1609, 0.2461, 0.3379, 0.4407, 0.5626, 0.7230, 1.0)


def test_to_nf4_round_trip_lands_on_the_nearest_nf4_level_of_each_block():
    torch.manual_seed(0)
    weight = torch.randn(128, 256, dtype=torch.bfloat16)
    restored = get_original_weight(to_nf4(weight))
    assert restored.shape == weight.shape and restored.dtype == torch.bfloat16
    blocks, back = weight.float().view(-1, 64), restored.float().view(-1, 64)
    absmax = blocks.abs().amax(dim=1, keepdim=True)
    levels = torch.tensor(NF4_LEVELS)
    # every restored value is an NF4 level times its block's constant (which went through int8:
    # double quantization), and within half the widest gap between levels of the weight
    on_a_level = (back / absmax).unsqueeze(-1).sub(levels).abs().amin(-1)
    assert (on_a_level <= 0.02).all()
    assert ((back - blocks).abs() <= (0.277 / 2 + 0.02) * absmax).all()
    assert (back - blocks).abs().mean() < 0.1 * blocks.abs().mean()


def test_to_nf4_stores_what_nf4tensor_stores():
    n = 128 * 256
    stored = to_nf4(torch.randn(128, 256, dtype=torch.bfloat16)).tensors
    sizes = {name: (t.dtype, t.numel(), t.untyped_storage().nbytes()) for name, t in stored.items()}
    assert sizes == {
        "quantized_data": (torch.uint8, n // 2, n // 2),            # two 4-bit codes a byte
        "quantized_scalers": (torch.int8, n // 64, n // 64),        # one 8-bit constant per block of 64
        "quantization_factor": (torch.bfloat16, n // 64 // 256, 2 * n // 64),  # a [:, 0] view: the whole storage
        "scaler_mean": (torch.bfloat16, 1, 2),
        "nf4": (torch.bfloat16, 16, 32)}


def _quantize_in_a_phase(backend, shape):
    meter = Meter(backend, backend.profile, None)
    backend.start()
    try:
        with meter.phase("quantize"):
            weight = torch.empty(shape, dtype=torch.bfloat16)
            nf4 = to_nf4(weight)
            del weight
    finally:
        backend.stop()
    return meter.phases["quantize"], nf4


def test_quantization_peaks_at_its_two_distance_tensors_real_and_simulated():
    """At ``(value - nf4).abs()`` the weight, its scaled copy and two [n, 16] bf16 tensors are alive,
    with the kept constants: 68n + 5n/64 + 34 bytes."""
    shape = (256, 512)
    n = shape[0] * shape[1]
    real, _ = _quantize_in_a_phase(CpuBackend(A100), shape)
    sim, _ = _quantize_in_a_phase(SimBackend(A100, gpu_models=False), shape)
    assert real.peak == sim.peak == 68 * n + 5 * n // 64 + 34
    assert real.allocated == sim.allocated == n // 2 + 3 * n // 64 + 34


def test_a_cloned_nf4_weight_is_a_copy_and_linear_nf4_trains_its_input():
    torch.manual_seed(0)
    nf4 = to_nf4(torch.randn(128, 128, dtype=torch.bfloat16))
    twin = clone(nf4)
    assert all(twin.tensors[k] is not nf4.tensors[k] and torch.equal(twin.tensors[k], nf4.tensors[k])
               for k in nf4.tensors)
    x = torch.randn(3, 128, dtype=torch.bfloat16, requires_grad=True)
    linear_nf4(x, nf4).float().sum().backward()
    expected = torch.ones(3, 128, dtype=torch.bfloat16) @ get_original_weight(nf4)
    assert torch.equal(x.grad, expected)


def test_the_replayed_model_is_torchtunes():
    twin = get_anchor("torchtune-qlora-llama2-7b-len512").tiny_twin()
    model = build(twin, "cpu", fill=True)
    base = model.model
    linears = [m for m in model.modules() if isinstance(m, LoRALinearNF4)]
    assert len(linears) == 7 * model.config.num_hidden_layers
    assert all(m.dropout.p == 0.0 for m in linears)   # the builders pass no lora_dropout at that commit
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and {p.dtype for p in trainable} == {torch.bfloat16}
    assert sum(p.numel() for p in trainable) == sum(m.rank * (m.in_features + m.out_features) for m in linears)
    assert model.lm_head.weight.dtype == base.embed_tokens.weight.dtype == torch.bfloat16
    head_dim = model.config.hidden_size // model.config.num_attention_heads
    caches = [layer.torchtune_rope.cache for layer in base.layers]
    assert {(tuple(c.shape), c.dtype) for c in caches} == {((MAX_SEQ_LEN, head_dim // 2, 2), torch.float32)}
    assert len({c.data_ptr() for c in caches}) == len(caches)   # deep copies, one per layer
    assert model.is_gradient_checkpointing


def _replayed(backend, anchor):
    meter = Meter(backend, backend.profile, None)
    backend.start()
    try:
        replay(anchor, meter)
    finally:
        backend.stop()
    return meter


def test_simulating_the_replay_on_a_cpu_target_gives_the_real_cpu_run():
    """Model init (its peak and what it leaves) and the training step, to the byte."""
    twin = get_anchor("torchtune-qlora-llama2-7b-len512").tiny_twin()
    real = _replayed(CpuBackend(A100), twin).phases
    sim = _replayed(SimBackend(A100, gpu_models=False), twin).phases
    for phase in ("creation", "step"):
        assert (sim[phase].peak, sim[phase].allocated) == (real[phase].peak, real[phase].allocated)
