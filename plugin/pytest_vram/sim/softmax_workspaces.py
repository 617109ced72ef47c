"""Temporaries the CUDA softmax kernels allocate through the caching allocator.

The simulator runs the fake (meta) kernels of ``_softmax`` / ``_log_softmax`` and of their
backwards, which allocate the output only. The CUDA host code (pytorch/pytorch
aten/src/ATen/native/cuda/SoftMax.cu @000cace5a401cabff792f70ee9768708415ec98d, torch 2.13's
line) also makes tensors that never leave the call, through the caching allocator, so they count
in ``max_memory_allocated`` and in reserved memory:

- ``softmax_backward_cuda_out(grad, output, dim, input_dtype, grad_input)``: ``Tensor tmp =
  grad * output;`` before ``host_softmax_backward(tmp, output, ...)``: a full-size product of
  the dtype ``grad * output`` promotes to (fp32 for the fp32 grad of an fp16 input softmaxed to
  fp32), laid out as TensorIterator lays out a binary op's result
  (``torch._prims_common.compute_elementwise_output_strides``, the reference the meta kernels
  use), alive until the function returns. ``grad_input`` is the structured kernel's output,
  allocated before the body runs (``TORCH_IMPL_FUNC``), i.e. before ``tmp``.
  ``log_softmax_backward_cuda_out`` passes ``grad`` itself: no product.
- ``host_softmax_backward``: ``grad_.contiguous()`` and ``output_.contiguous()``: a copy of each
  that is not contiguous, alive until the function returns.
- ``host_softmax`` (forward, softmax and log_softmax alike): ``input_.contiguous()``: a copy of
  a non-contiguous input.

The product predates the structured port: a July 2019 walk-through of SoftMax.cu (torch 1.1/1.2)
quotes the pre-structured ``softmax_backward_cuda(grad, output, dim, input)`` with the same
``Tensor tmp = grad * output;`` and ``host_softmax_backward`` allocating ``grad_input`` after it
(the same bytes, another order). torch 1.10's own file was not read (no copy of v1.10.2's
SoftMax.cu was reachable); the statement is in both the 2019 and the 2025-26 text.
"""
from __future__ import annotations

import torch
from torch._prims_common import compute_elementwise_output_strides

aten = torch.ops.aten
SOFTMAX_BACKWARD = aten._softmax_backward_data.default
LOG_SOFTMAX_BACKWARD = aten._log_softmax_backward_data.default
FORWARDS = frozenset({aten._softmax.default, aten._log_softmax.default})


def _contiguous(shape, strides) -> bool:
    """``is_contiguous()`` of a tensor with these sizes and strides (size-1 dims ignored)."""
    expected = 1
    for size, stride in zip(reversed(tuple(shape)), reversed(tuple(strides))):
        if size != 1 and stride != expected:
            return False
        expected *= size
    return True


def _bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _copy_if_not_contiguous(t: torch.Tensor) -> list[list[int]]:
    return [] if t.is_contiguous() else [[_bytes(t)]]


def backward_temporaries(grad: torch.Tensor, output: torch.Tensor, log: bool) -> list[list[int]]:
    """Statements of ``(log_)softmax_backward_cuda_out`` (see the module docstring)."""
    if grad.numel() == 0:
        return []
    if log:
        return [*_copy_if_not_contiguous(grad), *_copy_if_not_contiguous(output)]
    dtype = torch.promote_types(grad.dtype, output.dtype)
    shape = torch.broadcast_shapes(grad.shape, output.shape)
    tmp = shape.numel() * dtype.itemsize
    strides = compute_elementwise_output_strides(grad, output)
    copy = [] if _contiguous(shape, strides) else [[tmp]]
    return [[tmp], *copy, *_copy_if_not_contiguous(output)]


def softmax_temporaries(func, args) -> list[list[int]]:
    """Bytes of the transient buffers of the CUDA softmax kernel behind ``func``, as the
    statements :func:`.attention_workspaces.kernel_temporaries` returns (none for other ops)."""
    if func is SOFTMAX_BACKWARD or func is LOG_SOFTMAX_BACKWARD:
        return backward_temporaries(args[0], args[1], log=func is LOG_SOFTMAX_BACKWARD)
    if func in FORWARDS:
        return _copy_if_not_contiguous(args[0]) if args[0].numel() else []
    return []
