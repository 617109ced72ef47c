"""Temporaries the CUDA attention kernels allocate through the caching allocator.

The fake kernels return what the CUDA kernels return (dQ, dK, dV); the CUDA host code also
allocates buffers that never leave the call, through the caching allocator, so they count in
``max_memory_allocated`` / reserved. :func:`kernel_temporaries` gives their sizes, in the order
they are allocated (all freed when the call returns), for a GPU of compute capability ``cc``.
Sources: pytorch/pytorch aten/src/ATen/native/transformers/cuda/attention_backward.cu and
flash_attn/flash_api.cpp (main of 2025-26; the versions of torch 2.13's line).

Flash attention (``_scaled_dot_product_flash_attention_backward_cuda`` -> ``_flash_attention_backward``
-> ``mha_bwd``, dense, non-deterministic):

- ``grad_out.contiguous()`` and ``out.contiguous()`` of the [B, L, H, D] views: a copy each when
  the view is not contiguous;
- ``softmax_d``: fp32 [B, H, round_up(Lq, 128)];
- ``dq_accum``: fp32 [B, round_up(Lq, 128), H, round_up(D, 32 if D <= 128 else 64)];
- with fewer key/value heads than query heads (GQA), ``dk_expanded`` and ``dv_expanded``
  [B, Lk, H, D] in the inputs' dtype, summed into dK/dV per group.

Memory-efficient attention (``_efficient_attention_backward``, CUDA branch):

- ``grad_out_.contiguous()`` of the [B, M, H, K] view: a copy when not contiguous;
- ``delta``: when the kernel computes it (``Kernel::kKernelComputesDelta`` in
  mem_eff_attention/kernel_backward.h: fp16/bf16 and (``kOutputInRF`` or an Sm75/Sm80 kernel)),
  fp32 [B, H, M]; otherwise ``(grad_out.to(float) * out.to(float)).sum(-1).transpose(-2, -1)
  .contiguous()``: the fp32 copies (none for fp32 inputs), their product, the [B, M, H] sum and
  the [B, H, M] delta, all alive until the statement ends. On an Sm70 kernel (compute
  capability 7.0-7.4) with fp16, ``kOutputInRF = kMaxK <= kBlockSizeI``: true for head dims <= 64
  (the 64x64 k32/k64 kernels), false above 128 (the k65536 kernels); for 64 < K <= 128 it
  depends on which of the 128x64 / 64x64 k128 kernels ``dispatch_cutlassB`` launches, the first
  whose ``sizeof(SharedStorage)`` (a compile-time size) fits the card's shared memory: not
  determined here, so delta is not counted there.

Memory-efficient attention forward (``_efficient_attention_forward``): ``output_accum``, fp32
[B, M, H, Kv], when the kernel needs an output accumulator (``kNeedsOutputAccumulatorBuffer =
!kKeepOutputInRF && output_accum_t != output_t``, kernel_forward.h): fp16/bf16 inputs on the
kMaxK 65536 kernels, the only ones for head dims > 128 (kernels/cutlassF.h); none for head
dims <= 64 (the 64x64 kMaxK 64 kernels keep the output in registers) or fp32. For
64 < K <= 128 the kMaxK 128 kernel runs if its shared storage fits the card: not determined
here, not counted.

Not modelled: the efficient kernel's fp32 gradient accumulators (``p.workspace_size()``: sizes
from compile-time tile shapes and the split-keys heuristic), the 16-element padding of a
``grad_bias`` that requires grad, and flash's deterministic mode (``dq_accum`` per split).
"""
from __future__ import annotations

import torch

aten = torch.ops.aten
EFFICIENT_FORWARD = aten._scaled_dot_product_efficient_attention.default
FLASH_BACKWARD = aten._scaled_dot_product_flash_attention_backward.default
EFFICIENT_BACKWARD = aten._scaled_dot_product_efficient_attention_backward.default
FP32 = 4


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


def _copy_if_not_contiguous(t: torch.Tensor) -> list[int]:
    view = t.transpose(1, 2)
    return [] if view.is_contiguous() else [view.numel() * view.element_size()]


def flash_temporaries(grad_out, query, key, out) -> list[int]:
    b, h, lq, d = query.shape
    head_rounded = _round_up(d, 32 if d <= 128 else 64)
    expanded = [b * key.size(2) * h * d * query.element_size()] * 2 if key.size(1) != h else []
    return [*_copy_if_not_contiguous(grad_out), *_copy_if_not_contiguous(out),
            b * h * _round_up(lq, 128) * FP32,
            b * _round_up(lq, 128) * h * head_rounded * FP32, *expanded]


def kernel_computes_delta(cc: tuple[int, int], dtype: torch.dtype, max_k: int) -> bool | None:
    """``kKernelComputesDelta`` of the kernel the card would launch; None if not determined."""
    if dtype not in (torch.float16, torch.bfloat16):
        return False
    if not (7, 0) <= cc < (7, 5):
        return True        # Sm75 / Sm80 kernels
    if max_k <= 64:
        return True        # 64x64 kernels with kMaxK 32 / 64: output in registers
    if max_k > 128:
        return False       # kMaxK 65536: not in registers
    return None


def efficient_temporaries(cc: tuple[int, int], grad_out, query, value, out) -> list[int]:
    b, h, m, _ = query.shape
    sizes = _copy_if_not_contiguous(grad_out)
    computes = kernel_computes_delta(cc, query.dtype, max(query.size(-1), value.size(-1)))
    delta = b * h * m * FP32
    if computes is None:
        return sizes
    if computes:
        return [*sizes, delta]
    converted = [] if query.dtype == torch.float32 else [grad_out.numel() * FP32, out.numel() * FP32]
    return [*sizes, *converted, grad_out.numel() * FP32, delta, delta]


def efficient_forward_temporaries(query, value) -> list[int]:
    b, h, m, k = query.shape
    kv = value.size(-1)
    if query.dtype not in (torch.float16, torch.bfloat16) or max(k, kv) <= 128:
        return []
    return [b * m * h * kv * FP32]


def kernel_temporaries(func, args, cc: tuple[int, int]) -> list[int]:
    """Bytes of the transient buffers the CUDA kernel behind ``func`` allocates (none for
    other ops)."""
    if func is EFFICIENT_FORWARD:
        return efficient_forward_temporaries(args[0], args[2])
    if func is FLASH_BACKWARD:
        grad_out, query, key, _, out = args[:5]
        return flash_temporaries(grad_out, query, key, out)
    if func is EFFICIENT_BACKWARD:
        grad_out, query, _, value, _, out = args[:6]
        return efficient_temporaries(cc, grad_out, query, value, out)
    return []
