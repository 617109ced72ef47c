"""The simulator against real CPU runs of tiny models (same bytes) and against arithmetic."""
import pytest
import torch
import torch.nn.functional as F

from fixtures.cases import CASES
from fixtures.models import build_model, get_model_spec
from fixtures.suite import run_case
from pytest_vram.backends import CpuBackend
from pytest_vram.meter import Meter, PhaseOOM
from pytest_vram.profiles import get_profile
from pytest_vram.sim.attention import gpu_kernel, routed_attention
from pytest_vram.sim.backend import SimBackend, cublas_workspace_bytes, fake_tensors

V100 = get_profile("v100")
TINY = [c for c in CASES if not get_model_spec(c.model).full_size]


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


@pytest.mark.parametrize("case", TINY, ids=str)
def test_simulating_a_cpu_target_reproduces_the_real_cpu_run(case):
    real = measure(CpuBackend(V100), case)
    sim = measure(SimBackend(V100, gpu_models=False), case)
    assert summary(sim) == summary(real)
    assert sim.phases["step"].breakdown == real.phases["step"].breakdown


@pytest.mark.parametrize("case", TINY, ids=str)
def test_simulation_is_deterministic(case):
    assert summary(measure(SimBackend(V100), case)) == summary(measure(SimBackend(V100), case))


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
            model = build_model("llama-7b", torch.float16, "cpu").requires_grad_(False)
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
