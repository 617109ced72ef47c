"""Transient buffers of the CUDA attention backward kernels, counted by the allocator model
(arithmetic from attention_backward.cu / flash_api.cpp, see pytest_vram.sim.attention_workspaces)."""
import pytest
import torch
import torch.nn.functional as F

from pytest_vram.profiles import get_profile
from pytest_vram.sim.attention_workspaces import backward_kernel, forward_kernel, workspace_bytes
from pytest_vram.sim.backend import SimBackend, cublas_workspace_bytes

FP32 = 4


def backward_extra(profile, dtype, b, h, n, d, grad_layout="blhd"):
    """Allocator bytes asked for at the backward's peak beyond the live tensors, for an SDPA
    whose q/k/v/grad are [B, H, L, D] views of [B, L, H, D] buffers (as transformers and
    diffusers make them), or a contiguous [B, H, L, D] grad."""
    backend = SimBackend(profile)
    backend.start()
    try:
        leaves = [torch.empty(b, n, h, d, dtype=dtype, requires_grad=True) for _ in range(3)]
        q, k, v = (t.transpose(1, 2) for t in leaves)
        out = F.scaled_dot_product_attention(q, k, v)
        grad = torch.empty(b, n, h, d, dtype=dtype).transpose(1, 2) if grad_layout == "blhd" else \
            torch.empty(b, h, n, d, dtype=dtype)
        backend.tracker.mark()
        backend.allocator.reset_peak()
        out.backward(grad)
        return backend.allocator.peak_requested - backend.tracker.peak_bytes
    finally:
        backend.stop()


def test_flash_backward_holds_softmax_d_and_an_fp32_dq_accumulator():
    """mha_bwd: softmax_d [B, H, round128(L)] and dq_accum [B, round128(L), H, round32(D)], fp32."""
    b, h, n, d = 2, 8, 1000, 72
    extra = backward_extra(get_profile("a100_40gb"), torch.float16, b, h, n, d)
    assert extra == b * h * 1024 * FP32 + b * 1024 * h * 96 * FP32


def test_flash_backward_copies_a_grad_that_is_not_contiguous_in_its_layout():
    b, h, n, d = 1, 4, 256, 64
    blhd = backward_extra(get_profile("a100_40gb"), torch.float16, b, h, n, d)
    bhld = backward_extra(get_profile("a100_40gb"), torch.float16, b, h, n, d, grad_layout="bhld")
    assert bhld - blhd == b * h * n * d * 2      # grad_out.contiguous() of the [B, L, H, D] view


def test_efficient_backward_in_fp32_computes_delta_with_fp32_temporaries():
    """attention_backward.cu: f32 kernels never compute delta, so the host computes
    (grad_out * out).sum(-1).transpose(-2, -1).contiguous(): product, sum and delta, the first
    two freed when the statement ends. An fp32 output is its own accumulator, so only dQ's
    split-keys staging area is a workspace, allocated after: the sm70 f32 64x64 k64 kernel,
    ceil(256/64) query blocks x 1 column x GradQTempStorage (16 + 64*64*4 bytes) per head."""
    b, h, n, d = 1, 8, 256, 40
    extra = backward_extra(get_profile("v100"), torch.float32, b, h, n, d)
    product, delta, workspace = b * n * h * d * FP32, b * h * n * FP32, b * h * 4 * (16 + 64 * 64 * FP32)
    assert extra == max(product + 2 * delta, delta + workspace) == delta + workspace
    small = backward_extra(get_profile("v100"), torch.float32, b, h, 64, d)   # one query block
    assert small == max(b * 64 * h * d * FP32 + 2 * b * h * 64 * FP32, b * h * 64 * FP32 + b * h * (16 + 64 * 64 * FP32))


BMHK = (8 * 128, 8 * 128, 8 * 128)     # stride(2) of [B, M, H, K] views, 8 heads of 128


@pytest.mark.parametrize("cc, dtype, k, kernel", [
    # V100: the 128x64 k128 kernel's 49 KiB of shared storage fits the card's 96 KiB
    ((7, 0), torch.float16, 128, (128, 64, 128, True, False)),
    ((7, 0), torch.float16, 64, (64, 64, 64, True, False)),
    ((7, 0), torch.float16, 160, (128, 64, 65536, False, True)),
    # T4 (64 KiB): the 128x64 k128 kernel (54 KiB) fits too
    ((7, 5), torch.float16, 128, (128, 64, 128, True, False)),
    # A100 (163 KiB): the 128x128 k128 kernel (150 KiB in fp16)
    ((8, 0), torch.float16, 128, (128, 128, 128, True, False)),
    # L40S / RTX 4090 (99 KiB): 128x128 does not fit, the 64x64 k128 kernel stages dK/dV
    ((8, 9), torch.bfloat16, 128, (64, 64, 128, True, True)),
    ((8, 6), torch.float32, 64, (64, 64, 64, False, False)),
])
def test_which_efficient_backward_kernel_a_card_launches(cc, dtype, k, kernel):
    """The first kernel of dispatch_cutlassB whose compile-time sizes pass launchKernel's
    checks: (block_i, block_j, max_k, computes delta, stages dK/dV in fp32 memory)."""
    chosen = backward_kernel(cc, dtype, k, 512, 512, False, BMHK)
    assert (chosen.block_i, chosen.block_j, chosen.max_k, chosen.computes_delta,
            chosen.accum_grad_k) == kernel


def test_efficient_backward_kernel_is_not_guessed_for_an_unknown_card():
    assert backward_kernel((6, 1), torch.bfloat16, 64, 64, 64, False, BMHK) is None
    assert backward_kernel((11, 3), torch.float16, 64, 64, 64, False, BMHK) is None


def test_seq_aligned_kernels_need_block_multiples():
    aligned = backward_kernel((7, 0), torch.float16, 128, 512, 512, False, BMHK)
    ragged = backward_kernel((7, 0), torch.float16, 128, 500, 500, False, BMHK)
    assert aligned.seq_aligned and not ragged.seq_aligned
    assert ragged.block_i == 128 and ragged.shared_storage == aligned.shared_storage


def test_llama_on_a_v100_stages_dq_in_an_fp32_workspace():
    """LLaMA-7B on a V100: fp16, 32 heads of 128, 512 tokens, batch 4. The 128x64 k128 kernel
    keeps dK/dV in registers; dQ goes through GradQTempStorage tiles: 4 query blocks x 2
    columns of (16 + 128*64*4) bytes per (batch, head)."""
    kernel = backward_kernel((7, 0), torch.float16, 128, 512, 512, False, (4096,) * 3)
    assert workspace_bytes(kernel, 4, 32, 512, 512, 128, 128) == 4 * 32 * 4 * 2 * (16 + 128 * 64 * FP32)


def test_split_keys_are_capped_when_dk_dv_need_staging():
    """attention_backward.cu: ceil(N / 64) splits, at most 200 // (B * H) when gK/gV are
    staged (one 64 x 128 fp32 tile each per split), at least 1."""
    kernel = backward_kernel((8, 9), torch.float16, 128, 512, 4096, False, BMHK)
    per_head_gq = 8 * 2 * (16 + 64 * 64 * FP32) // FP32
    staged = 64 * 128
    assert workspace_bytes(kernel, 1, 8, 512, 4096, 128, 128) == 8 * (25 * 2 * staged + per_head_gq) * FP32
    assert workspace_bytes(kernel, 1, 8, 512, 512, 128, 128) == 8 * (8 * 2 * staged + per_head_gq) * FP32
    assert workspace_bytes(kernel, 4, 64, 512, 512, 128, 128) == 4 * 64 * (2 * staged + per_head_gq) * FP32


def test_efficient_backward_with_fp16_kernel_delta_and_dq_workspace():
    """V100, fp16, head dim 64: the 64x64 k64 kernel computes delta (one fp32 value per query)
    and stages dQ: 8 query blocks x 1 column x (16 + 64*64*4) bytes per head."""
    b, h, n, d = 1, 8, 512, 64
    extra = backward_extra(get_profile("v100"), torch.float16, b, h, n, d)
    assert extra == b * h * n * FP32 + b * h * 8 * (16 + 64 * 64 * FP32)


def test_cublaslt_shares_the_cublas_workspace():
    """torch 2.13 (torch/backends/cuda blas_workspace_size): the cuBLASLt workspace reuses the
    cuBLAS one by default; mm (cuBLAS) and addmm (cuBLASLt) allocate one workspace between them."""
    backend = SimBackend(get_profile("v100"))
    backend.start()
    try:
        a = torch.empty(64, 64)
        live = backend.allocator.requested
        keep = [a @ a, torch.addmm(a, a, a)]
        assert backend.allocator.requested - live == 2 * 64 * 64 * FP32 + cublas_workspace_bytes(get_profile("v100"))
        del keep
    finally:
        backend.stop()


def forward_extra(profile, dtype, b, h, n, d):
    """Allocator bytes asked for at the forward's peak beyond the live tensors."""
    backend = SimBackend(profile)
    backend.start()
    try:
        q, k, v = (torch.empty(b, n, h, d, dtype=dtype, requires_grad=True).transpose(1, 2) for _ in range(3))
        backend.tracker.mark()
        backend.allocator.reset_peak()
        F.scaled_dot_product_attention(q, k, v)
        return backend.allocator.peak_requested - backend.tracker.peak_bytes
    finally:
        backend.stop()


@pytest.mark.parametrize("dtype, d, accumulator", [
    (torch.float16, 160, True),    # kMaxK 65536 kernel: output accumulated in fp32 memory
    (torch.float16, 128, False),   # 32x128 kMaxK 128 kernel (25 KiB): output kept in registers
    (torch.float16, 64, False),    # 64x64 kMaxK 64 kernel: output kept in registers
    (torch.float32, 160, False),   # fp32 output is its own accumulator
])
def test_efficient_forward_output_accumulator(dtype, d, accumulator):
    b, h, n = 1, 8, 64
    extra = forward_extra(get_profile("v100"), dtype, b, h, n, d)
    assert extra == (b * n * h * d * FP32 if accumulator else 0)


def test_forward_kernel_choice_follows_the_cards_shared_memory():
    chosen = forward_kernel((8, 9), torch.bfloat16, 128, False, False, BMHK)
    assert (chosen.queries_per_block, chosen.keys_per_block, chosen.needs_output_accum) == (64, 128, False)
    assert forward_kernel((8, 9), torch.bfloat16, 256, False, False, BMHK).needs_output_accum


def gqa_step(profile, dtype, b, hq, hkv, n, d):
    """(kernel used, bytes the forward keeps, extra allocator bytes at the backward's peak)
    for an SDPA with enable_gqa: hkv key/value heads shared by hq query heads."""
    from pytest_vram.sim import attention

    backend = SimBackend(profile)
    backend.start()
    try:
        q = torch.empty(b, n, hq, d, dtype=dtype, requires_grad=True).transpose(1, 2)
        k, v = (torch.empty(b, n, hkv, d, dtype=dtype, requires_grad=True).transpose(1, 2) for _ in range(2))
        calls = []
        original = attention._run
        attention._run = lambda kernel, *a: calls.append(kernel) or original(kernel, *a)
        try:
            before = backend.tracker.live_bytes
            out = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
            kept = backend.tracker.live_bytes - before
        finally:
            attention._run = original
        backend.tracker.mark()
        backend.allocator.reset_peak()
        out.backward(torch.empty(b, n, hq, d, dtype=dtype).transpose(1, 2))
        return calls[0], kept, backend.allocator.peak_requested - backend.tracker.peak_bytes
    finally:
        backend.stop()


def test_gqa_runs_flash_on_shared_kv_heads_and_expands_only_the_gradients():
    """Flash takes GQA natively (no repeated K/V kept); mha_bwd allocates dk/dv_expanded."""
    b, hq, hkv, n, d = 1, 8, 2, 256, 64
    kernel, kept, extra = gqa_step(get_profile("a100_40gb"), torch.float16, b, hq, hkv, n, d)
    assert kernel == "flash"
    output, logsumexp = b * n * hq * d * 2, b * hq * n * FP32
    assert 0 <= kept - output - logsumexp <= 64          # + the rng state scalars; no repeated K/V
    softmax_d, dq_accum = b * hq * 256 * FP32, b * 256 * hq * 64 * FP32
    assert extra == softmax_d + dq_accum + 2 * b * n * hq * d * 2


def test_gqa_falls_back_to_math_where_flash_cannot_run():
    """V100: no flash, and the memory-efficient kernel does not take GQA: torch runs math."""
    kernel, _, _ = gqa_step(get_profile("v100"), torch.float16, 1, 8, 2, 128, 64)
    assert kernel == "math"


@pytest.mark.parametrize("last, kept_mask", [(64, 64), (77, 80)])
def test_efficient_kernel_keeps_the_mask_padded_to_8_element_strides(last, kept_mask):
    """attention.cpp: the bool mask becomes an additive fp16 mask; preprocess_mask pads rows whose
    stride is not a multiple of 8 (77 -> 80 columns) and the kernel keeps that copy for backward."""
    backend = SimBackend(get_profile("v100"))
    backend.start()
    try:
        q = torch.empty(1, 4, 32, 64, dtype=torch.float16, requires_grad=True)
        k = torch.empty(1, 4, last, 64, dtype=torch.float16, requires_grad=True)
        mask = torch.ones(32, last, dtype=torch.bool)
        before = backend.tracker.live_bytes
        out = F.scaled_dot_product_attention(q, k, k, attn_mask=mask)
        kept = backend.tracker.live_bytes - before
    finally:
        backend.stop()
    output, logsumexp = 1 * 4 * 32 * 64 * 2, 1 * 4 * 32 * FP32
    assert kept - output - logsumexp - 32 * kept_mask * 2 in range(0, 65)   # + rng scalars
    assert out.shape == q.shape
