"""The simulator against real CPU runs of tiny models (same bytes) and against arithmetic."""
import pytest
import torch
import torch.nn.functional as F

from fixtures.adapters import apply_adapter
from fixtures.cases import CASES
from fixtures.models import build_model
from fixtures.suite import run_case
from pytest_vram.backends import CpuBackend
from pytest_vram.meter import Meter, PhaseOOM
from pytest_vram.profiles import get_profile
from pytest_vram.sim.attention import gpu_kernel, routed_attention
from pytest_vram.sim.backend import SimBackend, cublas_workspace_bytes, fake_tensors

V100 = get_profile("v100")
TWINS = list({c.tiny_twin().id: c.tiny_twin() for c in CASES}.values())
TINY = [c for c in TWINS if c.quantization == "fp32" and c.adapter == "lora"][:1] + \
    [c for c in TWINS if c.quantization == "nf4-dq"][:1]


class OneRound:
    """Stands in for pytest-benchmark's fixture outside pytest."""

    def pedantic(self, fn, args=(), rounds=1, iterations=1):
        return fn(*args)


def measure(backend, case, budget=None):
    meter = Meter(backend, backend.profile, budget)
    backend.start()
    try:
        run_case(case, meter, OneRound())
    finally:
        backend.stop()
    return meter


def summary(meter):
    c, s = meter.phases["creation"], meter.phases["step"]
    return {"creation.allocated": c.allocated, "step.peak": s.peak, "step.allocated": s.allocated,
            "trainable": meter.trainable_params}


@pytest.mark.parametrize("case", TWINS, ids=str)
def test_simulating_a_cpu_target_reproduces_the_real_cpu_run(case):
    """Every adapter x quantization x recipe the suite uses, on its tiny twin: same bytes."""
    real = summary(measure(CpuBackend(V100), case))
    sim = summary(measure(SimBackend(V100, gpu_models=False), case))
    assert sim == real


@pytest.mark.parametrize("case", TINY, ids=str)
def test_simulation_is_deterministic(case):
    assert summary(measure(SimBackend(V100), case)) == summary(measure(SimBackend(V100), case))


def test_breakdown_is_the_same_in_simulation_and_real_run():
    case = TINY[1]
    real = measure(CpuBackend(V100), case)
    sim = measure(SimBackend(V100, gpu_models=False), case)
    for phase in ("creation", "step"):
        assert sim.phases[phase].breakdown == real.phases[phase].breakdown
    assert real.phases["creation"].breakdown["quantized_weights"] > 0


def test_gpu_models_add_exactly_block_rounding_at_creation():
    """After creation the live blocks are the model's and adapter's storages: without the GPU
    models allocated is their sum; the caching allocator model adds exactly each one's rounding
    up to 512 bytes, and reserves whole 2 MiB segments; the context comes on top."""
    case = TINY[0]
    model = apply_adapter(build_model(case.model, case.quantization), case.family, case.adapter, case.rank)
    sizes = list({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
                  for t in [*model.parameters(), *model.buffers()]}.values())
    plain = measure(SimBackend(V100, gpu_models=False), case).phases["creation"]
    gpu = measure(SimBackend(V100), case).phases["creation"]
    assert plain.allocated == sum(sizes)
    assert gpu.allocated == sum(-(-n // 512) * 512 for n in sizes)
    assert gpu.reserved % (2 * 2**20) == 0 and gpu.reserved >= gpu.peak and plain.reserved is None
    assert (gpu.context, plain.context) == (V100.context_bytes, 0)


def test_gpu_models_add_rounding_context_and_workspace():
    case = TINY[0]
    plain = measure(SimBackend(V100, gpu_models=False), case).phases
    gpu = measure(SimBackend(V100), case).phases
    # every block is rounded up to 512 bytes: allocated grows, never shrinks
    assert gpu["creation"].allocated >= plain["creation"].allocated
    # the cuBLAS workspace stays allocated after the first matrix product
    assert gpu["step"].allocated >= plain["step"].allocated + cublas_workspace_bytes(V100)
    assert gpu["step"].reserved >= gpu["step"].peak
    assert gpu["step"].reserved % (2 * 2**20) == 0          # whole segments
    assert gpu["step"].context == V100.context_bytes and plain["step"].context == 0
    assert gpu["step"].total == gpu["step"].reserved + V100.context_bytes
    assert sum(gpu["step"].breakdown.values()) == gpu["step"].peak


def test_full_size_llama_weights_match_parameters_times_bytes():
    backend = SimBackend(V100, gpu_models=False)
    meter = Meter(backend, V100, None)
    backend.start()
    try:
        with meter.phase("creation"):
            model = build_model("llama-7b", "fp16", "cpu").requires_grad_(False)
            meter.track(model)
        buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    finally:
        backend.stop()
    assert meter.phases["creation"].allocated == 6_738_415_616 * 2 + buffers
    assert meter.phases["creation"].breakdown["frozen_weights"] == 6_738_415_616 * 2 + buffers


def test_simulated_oom_is_raised_at_the_limit_and_recorded():
    case = TINY[0]
    with pytest.raises(PhaseOOM, match="simulated CUDA out of memory"):
        measure(SimBackend(V100, budget=V100.context_bytes + 4 * 2**20), case)


@pytest.mark.parametrize("capability, dtype, mask, kernel", [
    ((7, 0), torch.float16, None, "efficient"),
    ((8, 0), torch.float16, None, "flash"),
    ((8, 0), torch.float32, None, "efficient"),
    ((9, 0), torch.float16, torch.zeros(1), "efficient"),
])
def test_attention_kernel_follows_the_gpu(capability, dtype, mask, kernel):
    assert gpu_kernel(capability, torch.empty(1, 1, 1, 64, dtype=dtype), mask) == kernel


def test_memory_efficient_attention_never_holds_the_score_matrix():
    from pytest_vram.tracker import StorageTracker

    b, h, n, d = 1, 8, 1024, 64
    with fake_tensors(), routed_attention((7, 0)) as used:
        q = torch.empty(b, h, n, d, dtype=torch.float16, requires_grad=True)
        with StorageTracker() as efficient:
            F.scaled_dot_product_attention(q, q, q, is_causal=True)
        with StorageTracker() as math:
            torch.ops.aten._scaled_dot_product_attention_math(q, q, q, None, 0.0, True)
    assert used == ["efficient"]
    output = b * h * n * d * 2
    assert efficient.peak_bytes <= output + b * h * n * 4 + 64   # output + fp32 log-sum-exp, no n x n
    assert math.peak_bytes >= b * h * n * n * 2                  # the math path materializes scores


def _nf4_bytes(out_features, in_features, double_quant):
    """bitsandbytes' 4-bit storage of one weight: two values per byte, one absmax per block of
    64 (fp32; with double quantization uint8, plus an fp32 absmax per 256 of those, an fp32
    offset and the layer's own copy of the 8-bit code table, 256 x fp32), and the 16-entry NF4
    code table (fp32)."""
    n = out_features * in_features
    blocks = n // 64
    constants = blocks + -(-blocks // 256) * 4 + 4 + 256 * 4 if double_quant else blocks * 4
    return n // 2 + constants + 16 * 4


@pytest.mark.parametrize("quantization", ["nf4", "nf4-dq"])
def test_full_size_nf4_weights_match_arithmetic(quantization):
    backend = SimBackend(V100, gpu_models=False)
    backend.start()
    try:
        model = build_model("llama-7b", quantization)
        allocated = backend.tracker.live_bytes
    finally:
        backend.stop()
    quantized = [m for m in model.modules() if type(m).__name__ == "Linear4bit"]
    assert len(quantized) == 32 * 7   # every linear layer but the LM head
    fp16 = sum(p.numel() * 2 for p in model.parameters() if p.dtype == torch.float16)
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    expected = sum(_nf4_bytes(m.out_features, m.in_features, quantization == "nf4-dq") for m in quantized)
    assert allocated == expected + fp16 + buffers
    # QLoRA's figures: 4 bits + 0.5 bits of constants per parameter, 0.127 with double quantization
    params = sum(m.out_features * m.in_features for m in quantized)
    bits = 8 * (expected - params // 2) / params
    assert bits == pytest.approx(0.127 if quantization == "nf4-dq" else 0.5, abs=0.01)


def test_double_quantization_code_map_is_a_fake_tensor_not_counted():
    """While the simulator runs, bitsandbytes' module-wide 8-bit code map is a fake tensor of
    its mode (so quantize_blockwise's dispatch can be cached), made before the tracker starts:
    not counted, as the real table was not; each layer's copy of it still is (1 KiB)."""
    bnb = pytest.importorskip("bitsandbytes")
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

    backend = SimBackend(V100, gpu_models=False)
    backend.start()
    try:
        table = bnb.functional.name2qmap["dynamic"]
        assert isinstance(table, FakeTensor) and table.shape == (256,)
        assert backend.tracker.live_bytes == 0
        before = FakeTensorMode.cache_bypasses["non-fake tensor"]
        x = torch.empty(512, dtype=torch.float32)
        out, state = bnb.functional.quantize_blockwise(x, blocksize=256)
        assert FakeTensorMode.cache_bypasses["non-fake tensor"] == before
        assert out.dtype == torch.uint8 and state.code is not table and state.code.untyped_storage().nbytes() == 1024
        assert backend.tracker.live_bytes == 512 * 4 + 512 + 2 * 4 + 1024  # x, out, absmax, the copy
    finally:
        backend.stop()
    assert not isinstance(bnb.functional.name2qmap["dynamic"], FakeTensor)
