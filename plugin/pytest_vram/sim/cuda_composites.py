"""Composite ATen kernels that branch on ``input.is_cuda()``: their CUDA branch, for a GPU target.

Under the simulator the tensors are fake *CPU* tensors, so a CompositeImplicitAutograd kernel
that asks "is this a CUDA tensor?" takes its CPU branch and allocates what the CPU allocates.
While a GPU target is simulated, the kernels below replace those composites (a Python kernel
registered for the ``CompositeImplicitAutograd`` key of the ``aten`` op, so calls from C++ such
as SDPA's math path reach it too) and take the branch CUDA takes. Composite kernels decompose
before any ``__torch_dispatch__`` mode sees them, so this is the level where the choice is made.

- ``aten::dropout`` (aten/src/ATen/native/Dropout.cpp, ``dropout`` and
  ``is_fused_kernel_acceptable``): on CUDA, in training with 0 < p < 1 and a non-empty input,
  it is ``native_dropout``: the output plus a 1-byte bool mask, which its backward keeps. On
  the CPU it is ``input * noise`` with ``noise = empty_like(input).bernoulli_(1 - p).div_(1 - p)``
  and the noise (input's dtype) kept for backward: a 4096 x 4096 fp32 dropout holds 64 MiB +
  16 MiB on CUDA, 64 MiB + 64 MiB on the CPU. Otherwise both return the input (p = 0, eval,
  empty) or ``input * zeros({})`` (p = 1). ``dropout_`` (in place) has no fused branch on
  either device and is left alone; so are feature/alpha dropout.
- ``aten::softmax.int`` / ``aten::log_softmax.int`` (aten/src/ATen/native/SoftMax.cpp,
  ``softmax`` / ``log_softmax``): for a CUDA fp16 input with ``dtype=float32`` (what CUDA
  autocast asks for, see :mod:`.autocast_lists`) they call ``_softmax(input, dim,
  half_to_float=True)``: one fp32 output, read straight from the fp16 input. The CPU branch
  first makes an fp32 copy of the input (``input.toType(dtype)``), a full-size temporary, then
  ``_softmax(converted, dim, false)``. bf16 inputs take the copy branch on CUDA too.

For a CPU target nothing is registered: the CPU branches are the right ones.

Checked and found the same on both devices (nothing to do): cross entropy
(Loss.cpp ``cross_entropy_loss``: ``log_softmax`` then ``nll_loss_nd``, the same ops and saved
tensors; under autocast CUDA's fp32 policy for log_softmax/nll_loss comes from
:mod:`.autocast_lists` and the half_to_float branch from here) and group norm
(group_norm.cpp ``native_group_norm`` is one implementation for CPU and CUDA: mean/rstd in
``param_scalar_type``). ``native_layer_norm`` is no composite, but its CUDA kernel returns fp32
mean/rstd for a half input where the CPU's returns the input's dtype: :mod:`.cuda_kernel_outputs`.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Iterator

import torch

aten = torch.ops.aten


def dropout(input: torch.Tensor, p: float, train: bool) -> torch.Tensor:
    """at::native::dropout as it runs on a CUDA tensor."""
    if not 0 <= p <= 1:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    if train and 0 < p < 1 and input.numel() > 0:   # is_fused_kernel_acceptable, input.is_cuda()
        return aten.native_dropout(input, p, train)[0]
    if p == 0 or not train or input.numel() == 0:
        return input
    return input * torch.zeros((), dtype=input.dtype, device=input.device)


def _half_to_float(fused, input: torch.Tensor, dim: int, dtype) -> torch.Tensor:
    if input.dtype == torch.float16 and dtype == torch.float32:
        return fused(input, dim, True)
    converted = input if dtype is None else input.to(dtype)
    return fused(converted, dim, False)


def softmax(input: torch.Tensor, dim: int, dtype=None) -> torch.Tensor:
    """at::native::softmax as it runs on a CUDA tensor."""
    return _half_to_float(aten._softmax, input, dim, dtype)


def log_softmax(input: torch.Tensor, dim: int, dtype=None) -> torch.Tensor:
    """at::native::log_softmax as it runs on a CUDA tensor."""
    return _half_to_float(aten._log_softmax, input, dim, dtype)


# op name -> its CUDA branch; one entry per composite that branches on is_cuda()
CUDA_BRANCHES = {"dropout": dropout, "softmax.int": softmax, "log_softmax.int": log_softmax}


@contextlib.contextmanager
def cuda_composites() -> Iterator[None]:
    """While active, the composites in ``CUDA_BRANCHES`` take their CUDA branch."""
    lib = torch.library.Library("aten", "IMPL")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="(?s).*Overriding a previously registered kernel.*")
            for name, kernel in CUDA_BRANCHES.items():
                lib.impl(name, kernel, "CompositeImplicitAutograd")
        yield
    finally:
        lib._destroy()
