"""Under a GPU profile the simulator takes torch's CUDA code paths; for a CPU target, the CPU's.

Each expected figure is arithmetic from the torch source the module under test cites."""
import pytest
import torch
import torch.nn.functional as F

from pytest_vram.meter import Meter
from pytest_vram.profiles import get_profile
from pytest_vram.sim import autocast_lists
from pytest_vram.sim.backend import SimBackend

V100 = get_profile("v100")
MiB = 2**20


@pytest.fixture(params=[True, False], ids=["v100", "cpu-target"])
def target(request):
    """A running simulator: the V100 (GPU models on) or a CPU target (off)."""
    backend = SimBackend(V100, gpu_models=request.param)
    backend.start()
    try:
        yield backend
    finally:
        backend.stop()


def kept_bytes(backend, fn, *args):
    """Bytes that ``fn(*args)`` leaves alive (its output and what autograd saved)."""
    before = backend.tracker.live_bytes
    out = fn(*args)
    return backend.tracker.live_bytes - before, out


def test_dropout_keeps_a_bool_mask_on_the_gpu_and_the_noise_on_the_cpu(target):
    """Dropout.cpp: native_dropout on CUDA (output + 1-byte mask); input * noise on the CPU."""
    x = torch.empty(4096, 4096, requires_grad=True)
    kept, y = kept_bytes(target, F.dropout, x, 0.1, True)
    if target.gpu_models:
        assert kept == 64 * MiB + 16 * MiB
        assert type(y.grad_fn).__name__ == "NativeDropoutBackward0"
    else:
        assert kept == 64 * MiB + 64 * MiB
        assert type(y.grad_fn).__name__ == "MulBackward0"


@pytest.mark.parametrize("p, train", [(0.0, True), (0.5, False)])
def test_dropout_that_does_nothing_returns_its_input_on_both(target, p, train):
    x = torch.empty(1024, 1024, requires_grad=True)
    kept, y = kept_bytes(target, F.dropout, x, p, train)
    assert kept == 0 and y is x


def test_lora_dropout_takes_the_gpu_kernel():
    """peft's LoRA dropout is an nn.Dropout: under a GPU profile its mask is bool."""
    backend = SimBackend(V100)
    backend.start()
    try:
        kept, _ = kept_bytes(backend, torch.nn.Dropout(0.05), torch.empty(512, 4096, dtype=torch.float16,
                                                                        requires_grad=True))
    finally:
        backend.stop()
    assert kept == 512 * 4096 * (2 + 1)


def autocast_dtypes():
    x = torch.empty(8, 64, dtype=torch.float16, requires_grad=True)
    w = torch.empty(64, 64)
    with torch.autocast("cpu", dtype=torch.float16):
        return {"softmax": torch.softmax(x, -1).dtype, "log_softmax": torch.log_softmax(x, -1).dtype,
                "layer_norm": F.layer_norm(x, [64], torch.ones(64), torch.zeros(64)).dtype,
                "group_norm": F.group_norm(x.view(8, 64, 1), 4).dtype, "sum": x.sum().dtype,
                "mm": torch.mm(x.float(), w).dtype, "linear": F.linear(x.float(), w).dtype,
                "cross_entropy": F.cross_entropy(x, torch.zeros(8, dtype=torch.long)).dtype}


def test_autocast_follows_cudas_lists_on_a_gpu_and_cpus_on_a_cpu(target):
    dtypes = autocast_dtypes()
    fp32_on_cuda = {"softmax", "log_softmax", "layer_norm", "group_norm", "sum", "cross_entropy"}
    assert dtypes["mm"] == dtypes["linear"] == torch.float16
    if target.gpu_models:
        assert {k for k, v in dtypes.items() if v == torch.float32} == fp32_on_cuda
    else:   # CPU autocast: only cross_entropy_loss is on its fp32 list
        assert {k for k, v in dtypes.items() if v == torch.float32} == {"cross_entropy"}


def test_autocast_is_the_cpus_again_after_the_simulation():
    backend = SimBackend(V100)
    backend.start()
    backend.stop()
    assert autocast_dtypes()["softmax"] == torch.float16


def test_cuda_autocast_table_names_exactly_the_ops_torch_registers_for_cuda():
    """The table is read from torch's source; the installed torch's AutocastCUDA kernels
    (compiled into the CPU wheel too) check it, op for op."""
    registered = {n.removeprefix("aten::") for n in torch._C._dispatch_get_all_op_names()
                  if n.startswith("aten::") and torch._C._dispatch_has_kernel_for_dispatch_key(n, "AutocastCUDA")}
    assert set(autocast_lists.CUDA_POLICY) == registered
    assert all(autocast_lists.registered(op, "AutocastCPU") for op in autocast_lists.SAME_ON_CPU)
    assert autocast_lists.SAME_ON_CPU <= set(autocast_lists.CUDA_POLICY)


def test_fp16_softmax_to_fp32_reads_the_input_without_an_fp32_copy_on_the_gpu(target):
    """SoftMax.cpp: on CUDA, fp16 in / fp32 out is _softmax(half_to_float=True); the CPU
    first converts the input to fp32 (a temporary the size of the output)."""
    x = torch.empty(1024, 1024, dtype=torch.float16)
    target.tracker.mark()
    before = target.tracker.live_bytes
    y = torch.softmax(x, -1, dtype=torch.float32)
    assert y.dtype == torch.float32
    temporaries = target.tracker.peak_bytes - before - 4 * MiB
    assert temporaries == (0 if target.gpu_models else 4 * MiB)


def test_adamw_step_holds_foreach_temporaries_on_the_gpu(target):
    """optimizer.py _default_to_fused_or_foreach: foreach on CUDA, single-tensor on the CPU.
    adam.py _multi_tensor_adam keeps exp_avg_sq_sqrt = _foreach_sqrt(exp_avg_sqs), one copy of
    every parameter; _single_tensor_adam makes denom = (exp_avg_sq.sqrt() / c).add_(eps) per
    parameter: two of one parameter's size at once. Both first create the state: exp_avg and
    exp_avg_sq per parameter and a 4-byte fp32 step counter, which on CUDA stays on the host
    (adam.py ``torch.tensor(0.0, ..., device="cpu")``: sim/optimizers.py host_scalars)."""
    sizes = [256 * 1024, 4096, 64]
    params = [torch.nn.Parameter(torch.empty(n)) for n in sizes]
    for p in params:
        p.grad = torch.empty_like(p)
    optimizer = torch.optim.AdamW(params)
    target.tracker.mark()
    before = target.tracker.live_bytes
    optimizer.step()
    state = sum(2 * 4 * n + (0 if target.gpu_models else 4) for n in sizes)
    temporaries = sum(4 * n for n in sizes) if target.gpu_models else 2 * 4 * max(sizes)
    assert target.tracker.peak_bytes - before == state + temporaries


def test_gradient_clipping_uses_foreach_norms_on_both_targets(target, monkeypatch):
    """clip_grad.py: foreach=None takes _foreach_norm where _has_foreach_support holds, which
    it does for real CPU and CUDA tensors alike."""
    calls = []
    norm = torch._foreach_norm
    monkeypatch.setattr(torch, "_foreach_norm", lambda *a, **k: calls.append(1) or norm(*a, **k))
    params = [torch.nn.Parameter(torch.empty(16)) for _ in range(3)]
    for p in params:
        p.grad = torch.empty_like(p)
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    assert calls == [1]


def test_peak_requested_is_the_bytes_asked_for_before_rounding():
    backend = SimBackend(V100)
    meter = Meter(backend, V100, None)
    backend.start()
    try:
        with meter.phase("p"):
            a = torch.empty(1000, dtype=torch.uint8)
            b = torch.empty(3 * MiB + 1, dtype=torch.uint8)
            del a, b
    finally:
        backend.stop()
    phase = meter.phases["p"]
    assert phase.peak_requested == 1000 + 3 * MiB + 1
    assert phase.peak == 1024 + 3 * MiB + 512
    assert phase.to_dict()["peak_requested"] == phase.peak_requested


def _graph_nodes(tensor):
    seen, pending = set(), [tensor.grad_fn]
    while pending:
        node = pending.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        pending += [n for n, _ in node.next_functions]
    return {type(n).__name__ for n in seen}


def test_dropout_called_from_cpp_takes_the_gpu_kernel_too():
    """SDPA's math path calls at::dropout from C++ (attention.cpp
    _scaled_dot_product_attention_math): the override is at the dispatcher, so it sees it."""
    backend = SimBackend(V100)
    backend.start()
    try:
        q = torch.empty(1, 2, 64, 7, requires_grad=True)   # head dim 7: unaligned, the math path
        out = F.scaled_dot_product_attention(q, q, q, dropout_p=0.5)
    finally:
        backend.stop()
    assert "NativeDropoutBackward0" in _graph_nodes(out)


def test_cuda_only_low_precision_ops_cast_a_weight_once_per_autocast_region():
    """autocast_mode.cpp cached_cast: an fp32 leaf that requires grad is cast to fp16 once per
    region, for einsum (on CUDA's lower-precision list, not on CPU's) as for linear."""
    backend = SimBackend(V100)
    backend.start()
    try:
        w = torch.empty(256, 256, requires_grad=True)
        x = torch.empty(8, 256, dtype=torch.float16)
        before = backend.tracker.live_bytes
        with torch.autocast("cpu", dtype=torch.float16):
            a = torch.einsum("ij,jk->ik", x, w)
            b = torch.einsum("ij,jk->ik", x, w)
            inside = backend.tracker.live_bytes - before
        assert a.dtype == b.dtype == torch.float16
        assert inside == 256 * 256 * 2 + 2 * 8 * 256 * 2   # one fp16 copy of w, two outputs
    finally:
        backend.stop()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_layer_norm_keeps_fp32_mean_and_rstd_on_the_gpu(target, dtype):
    """layer_norm_kernel.cu: mean/rstd in acc_type (fp32) for a half input on CUDA; the CPU
    kernel keeps them in the input's dtype. Backward runs with either and gives the input's dtype."""
    rows, width = 4096, 1024
    x = torch.empty(rows, width, dtype=dtype, requires_grad=True)
    w, b = (torch.empty(width, dtype=dtype, requires_grad=True) for _ in range(2))
    kept, y = kept_bytes(target, F.layer_norm, x, [width], w, b)
    stats = 2 * rows * (4 if target.gpu_models else 2)
    assert kept == rows * width * 2 + stats
    y.backward(torch.empty_like(y))
    assert x.grad.dtype == w.grad.dtype == dtype


def test_fp32_layer_norm_is_the_same_on_both(target):
    x = torch.empty(512, 256, requires_grad=True)
    kept, _ = kept_bytes(target, F.layer_norm, x, [256])
    assert kept == 512 * 256 * 4 + 2 * 512 * 4


def test_torch_optims_step_counters_stay_on_the_host_of_a_gpu_run():
    """torch/optim/adam.py: not capturable (nor fused), each ``state["step"]`` is a CPU tensor
    and ``_multi_tensor_adam`` adds a CPU ``torch.tensor(1.0)`` to them: no CUDA allocation, so
    nothing in the allocator model, not even when the meter labels the optimizer state. A tensor
    made from Python data outside the step is device memory as before."""
    from pytest_vram.sim.allocator import round_size

    backend = SimBackend(V100)
    backend.start()
    try:
        meter = Meter(backend, V100, V100.total_bytes)
        params = [torch.nn.Parameter(torch.empty(n)) for n in (4096, 64, 8)]
        for p in params:
            p.grad = torch.empty_like(p)
        optimizer = torch.optim.AdamW(params)
        meter.track(torch.nn.ParameterList(params), optimizer)
        before = backend.allocator.allocated
        optimizer.step()
        optimizer.step()
        assert len([optimizer.state[p]["step"] for p in params]) == 3
        assert backend.allocator.allocated - before == sum(2 * round_size(4 * p.numel()) for p in params)
        assert backend.tracker.host_scalars is False
        kept = torch.tensor([1.0, 2.0])
        assert backend.allocator.allocated - before == sum(2 * round_size(4 * p.numel()) for p in params) + 512
        del kept
    finally:
        backend.stop()
