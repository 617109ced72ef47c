"""Transient buffers of the CUDA softmax kernels, counted by the allocator model (arithmetic from
SoftMax.cu, see pytest_vram.sim.softmax_workspaces): softmax's backward multiplies grad by the
output into a full-size temporary before its kernel; log_softmax's does not."""
import pytest
import torch

from pytest_vram.profiles import get_profile
from pytest_vram.sim.backend import SimBackend
from pytest_vram.sim.softmax_workspaces import backward_temporaries

FP32, FP16 = 4, 2


def backward_extra(shape, dtype, *, log=False, to_fp32=False, grad_layout=None, target="v100"):
    """Allocator bytes asked for at the backward's peak beyond the live tensors (the requested
    peak less the tracked one), for a softmax over the last dim of a leaf of ``shape``."""
    backend = SimBackend(get_profile(target) if target else None)
    backend.start()
    try:
        x = torch.empty(shape, dtype=dtype, requires_grad=True)
        fn = torch.log_softmax if log else torch.softmax
        out = fn(x, -1, dtype=torch.float32 if to_fp32 else None)
        grad = torch.empty(shape, dtype=out.dtype)
        if grad_layout == "transposed":
            grad = torch.empty(shape[:-2] + shape[-2:][::-1], dtype=out.dtype).transpose(-1, -2)
        backend.tracker.mark()
        if backend.allocator is None:   # no allocator model: what the backward added to the live tensors
            live = backend.tracker.live_bytes
            out.backward(grad)
            return backend.tracker.peak_bytes - live
        backend.allocator.reset_peak()
        out.backward(grad)
        return backend.allocator.peak_requested - backend.tracker.peak_bytes
    finally:
        backend.stop()


def test_softmax_backward_holds_the_product_of_grad_and_output():
    """softmax_backward_cuda_out: Tensor tmp = grad * output, the size of the input, alive with
    grad_input (allocated before it) until the call returns."""
    shape = (2, 4, 64, 64)
    assert backward_extra(shape, torch.float32) == 2 * 4 * 64 * 64 * FP32


def test_fp16_softmax_to_fp32_multiplies_in_fp32():
    """Under CUDA autocast an fp16 input is softmaxed to fp32 (half_to_float): the grad and the
    saved output are fp32, so is their product; grad_input is fp16."""
    shape = (2, 4, 64, 64)
    assert backward_extra(shape, torch.float16, to_fp32=True) == 2 * 4 * 64 * 64 * FP32
    assert backward_extra(shape, torch.float16) == 2 * 4 * 64 * 64 * FP16


def test_log_softmax_backward_passes_grad_itself():
    assert backward_extra((2, 4, 64, 64), torch.float32, log=True) == 0


def test_a_grad_laid_out_otherwise_makes_the_product_and_its_contiguous_copy():
    """TensorIterator lays the product out like the grad when the grad is the first input of a
    different layout; host_softmax_backward's grad_.contiguous() then copies it."""
    shape = (2, 4, 64, 64)
    assert backward_extra(shape, torch.float32, grad_layout="transposed") == 2 * (2 * 4 * 64 * 64 * FP32)
    # log_softmax: grad_.contiguous() copies the grad itself; output_.contiguous() a strided output
    grad = torch.empty(2, 4, 64, 64).transpose(-1, -2)
    assert backward_temporaries(grad, torch.empty(shape), log=True) == [[2 * 4 * 64 * 64 * FP32]]
    assert backward_temporaries(torch.empty(shape), grad, log=True) == [[2 * 4 * 64 * 64 * FP32]]
    assert backward_temporaries(torch.empty(shape), torch.empty(shape), log=True) == []


def test_a_cpu_target_allocates_no_product():
    """The temporaries are the CUDA kernel's: with the GPU models off (a CPU target) the backward
    allocates what the CPU kernel does, the input-sized grad_input alone."""
    shape = (2, 4, 64, 64)
    assert backward_extra(shape, torch.float32, target=None) == 2 * 4 * 64 * 64 * FP32


@pytest.mark.parametrize("grad_dtype, out_dtype, product", [
    (torch.float32, torch.float32, FP32), (torch.float16, torch.float16, FP16), (torch.bfloat16, torch.bfloat16, 2)])
def test_product_dtype_is_the_promotion_of_grad_and_output(grad_dtype, out_dtype, product):
    grad, out = torch.empty(3, 5, dtype=grad_dtype), torch.empty(3, 5, dtype=out_dtype)
    assert backward_temporaries(grad, out, log=False) == [[15 * product]]
    assert backward_temporaries(grad[:0], out[:0], log=False) == []
