"""Which scaled-dot-product-attention kernel the simulated target would run.

Under fake tensors ``F.scaled_dot_product_attention`` cannot see the GPU, so the simulator
routes it to the kernel the target would pick, and that kernel's own memory behaviour (its
outputs and saved log-sum-exp, never the [B, H, L, L] matrix unless it is the math path):

- a GPU of compute capability >= 8.0: flash attention for fp16/bf16 without a mask and head
  dim <= 256 (multiple of 8); otherwise the memory-efficient kernel;
- an older GPU (V100 sm70, T4 sm75): the memory-efficient kernel;
- either, when the head dim is not aligned (8 elements for 16-bit, 4 for fp32): math;
- a boolean mask becomes an additive one of the query's dtype first, and the memory-efficient
  kernel gets it padded to 8-element strides (aten/src/ATen/native/transformers/attention.cpp
  ``scaled_dot_product_attention``: ``convert_boolean_attn_mask``, ``preprocess_mask``);
- a CPU target: what torch's own dispatcher picks for these dtypes and shapes on the CPU.

Grouped-query attention (``enable_gqa`` with fewer key/value heads than query heads): of the
fused CUDA kernels only flash attention takes it (sdp_utils.cpp: flash's dense constraints
instantiate ``check_batch_size_and_num_heads_dense<true /*supports GQA*/>``, the
memory-efficient kernel's ``<false>``), reading the shared key/value heads in place; otherwise
torch falls back to the math path, which repeats them (``_scaled_dot_product_attention_math``'s
``enable_gqa``). On a CPU target the dispatcher is asked with the real head counts: torch
2.13's CPU flash kernel is chosen for grouped-query shapes (``torch._fused_sdp_choice`` says so)
and reads the shared heads in place too.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend

aten = torch.ops.aten


def gpu_kernel(capability: tuple[int, int], query, attn_mask) -> str:
    head_dim = query.size(-1)
    align = 8 if query.dtype in (torch.float16, torch.bfloat16) else 4
    if head_dim % align:
        return "math"
    flash_ok = (query.dtype in (torch.float16, torch.bfloat16) and attn_mask is None
                and head_dim <= 256 and head_dim % 8 == 0)
    if capability >= (8, 0) and flash_ok:
        return "flash"
    return "efficient"


def cpu_kernel(query, key, value, attn_mask, dropout_p, is_causal, enable_gqa=False) -> str:
    """Ask torch's dispatcher, with tiny real tensors of the same dtypes, head counts and head
    dims (the CPU's flash kernel takes grouped-query shapes: torch 2.13's dispatcher picks it
    for them, so the probe keeps the query and key/value head counts)."""
    def probe(t):
        return torch.zeros(1, t.size(-3), 2, t.size(-1), dtype=t.dtype, requires_grad=t.requires_grad)

    mask = None if attn_mask is None else torch.zeros(1, 1, 2, 2, dtype=attn_mask.dtype)
    with torch._C._DisableTorchDispatch():
        choice = torch._fused_sdp_choice(probe(query), probe(key), probe(value), mask, dropout_p, is_causal,
                                         enable_gqa=enable_gqa)
    return "cpu_flash" if choice == SDPBackend.FLASH_ATTENTION.value else "math"


def _aligned(t: torch.Tensor, alignment: int) -> bool:
    return all(t.stride(i) % alignment == 0 for i in range(t.dim() - 1)) and t.stride(-1) == 1


def efficient_mask(mask: torch.Tensor, q, k) -> torch.Tensor:
    """attention.cpp ``preprocess_mask``: a mask whose strides are not multiples of 8 elements is
    padded by ``8 - last % 8`` columns and sliced back (the padded copy is what the kernel keeps),
    then expanded to [B, H, Lq, Lk]."""
    if not _aligned(mask, 8):
        last = mask.size(-1)
        mask = F.pad(mask, (0, 8 - last % 8))[..., :last]
    return mask.expand(q.size(0), q.size(1), q.size(2), k.size(2))


def _run(kernel: str, q, k, v, attn_mask, dropout_p, is_causal, scale, gqa=False):
    if attn_mask is not None and attn_mask.dtype == torch.bool:
        # attention.cpp convert_boolean_attn_mask, before any kernel: an additive mask
        attn_mask = torch.where(attn_mask, 0.0, torch.scalar_tensor(float("-inf"), dtype=q.dtype, device=q.device))
    if kernel == "efficient":
        attn_mask = None if attn_mask is None else efficient_mask(attn_mask, q, k)
        need_lse = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
        return aten._scaled_dot_product_efficient_attention(q, k, v, attn_mask, need_lse, dropout_p, is_causal,
                                                            scale=scale)[0]
    if kernel == "flash":
        return aten._scaled_dot_product_flash_attention(q, k, v, dropout_p, is_causal, scale=scale)[0]
    if kernel == "cpu_flash":
        return aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, dropout_p, is_causal,
                                                                attn_mask=attn_mask, scale=scale)[0]
    return aten._scaled_dot_product_attention_math(q, k, v, attn_mask, dropout_p, is_causal, scale=scale,
                                                   enable_gqa=gqa)[0]


def autocast_inputs(*tensors):
    """What autocast does before ``scaled_dot_product_attention`` runs: its policy is
    lower_precision_fp on CPU and on CUDA alike (aten/src/ATen/autocast_mode.cpp, AutocastCPU
    list; autocast_mode.h ``AT_FORALL_LOWER_PRECISION_FP``), so the floating-point inputs are
    cast to the region's dtype. The routed function replaces the op above the dispatcher, so
    it does this itself."""
    dtype = torch.get_autocast_dtype("cpu")
    return [t.to(dtype) if t is not None and t.is_floating_point() and t.dtype != torch.float64 else t
            for t in tensors]


@contextlib.contextmanager
def routed_attention(capability: tuple[int, int] | None):
    """Within the block, F.scaled_dot_product_attention runs the target's kernel
    (``capability`` of the GPU, or None for a CPU target). Yields the list of kernels used."""
    original = F.scaled_dot_product_attention
    used: list[str] = []

    def sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        if torch.is_autocast_enabled("cpu"):
            query, key, value, attn_mask = autocast_inputs(query, key, value, attn_mask)
        gqa = enable_gqa and key.size(-3) != query.size(-3)
        if capability is None:
            kernel = cpu_kernel(query, key, value, attn_mask, dropout_p, is_causal, gqa)
        else:
            kernel = gpu_kernel(capability, query, attn_mask)
            kernel = "math" if gqa and kernel != "flash" else kernel
        used.append(kernel)
        return _run(kernel, query, key, value, attn_mask, dropout_p, is_causal, scale, gqa)

    F.scaled_dot_product_attention = sdpa
    try:
        yield used
    finally:
        F.scaled_dot_product_attention = original
