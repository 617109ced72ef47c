"""Outputs whose dtype the CUDA kernel chooses differently from the CPU kernel, for a GPU target.

The simulator's fake tensors are CPU tensors, and torch's fake implementations follow the
device: for a CPU tensor they give what the CPU kernel returns. Where the CUDA kernel returns a
different dtype for the same call (an output that autograd saves, so it stays alive), the
tracker replaces that output with the CUDA one before counting it. Nothing else changes: the
replaced output is never counted, so no phantom allocation is added.

- ``aten::native_layer_norm`` returns ``(out, mean, rstd)``, ``mean`` and ``rstd`` saved for
  backward. CUDA (aten/src/ATen/native/cuda/layer_norm_kernel.cu ``layer_norm_cuda``:
  ``at::empty({M}, X->options().dtype(acc_type))`` with ``acc_type =
  at::toAccumulateType(input.scalar_type(), /*is_cuda=*/true)``) keeps them in fp32 for an
  fp16/bf16 input; the CPU (layer_norm.cpp ``layer_norm_cpu``: ``param_scalar_type``) keeps
  them in the input's dtype, and so does the fake implementation for a CPU tensor (a fake CUDA
  tensor gets fp32). 2 x 2 bytes more per row here than before: 32 KiB for a [4, 512, 1024]
  fp16 layer norm outside autocast (inside CUDA autocast layer_norm runs in fp32 on both).

Checked and the same on both devices (nothing to replace): ``native_group_norm`` (group_norm.cpp
is one implementation; mean/rstd in ``param_scalar_type`` on both), cross entropy
(``log_softmax`` + ``nll_loss_nd``: the same outputs; ``nll_loss_forward``'s ``total_weight``
is a 0-dim tensor of the input's dtype, set by the structured kernel's meta function that both
devices share, LossNLL.cpp ``TORCH_META_FUNC(nll_loss_forward)``).
"""
from __future__ import annotations

import torch

aten = torch.ops.aten
_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _layer_norm(args, out):
    if args[0].dtype not in _LOW_PRECISION:
        return out
    result, mean, rstd = out
    return result, torch.empty(mean.shape, dtype=torch.float32), torch.empty(rstd.shape, dtype=torch.float32)


# op -> (args, CPU outputs) -> CUDA outputs
CUDA_OUTPUTS = {aten.native_layer_norm.default: _layer_norm}
