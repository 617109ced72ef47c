"""CUDA autocast's op lists, applied to ``torch.autocast("cpu", ...)`` while a GPU is simulated.

The suite (and any test run under the simulator) autocasts on device "cpu", since its fake
tensors are CPU tensors; CPU autocast's lists differ from CUDA's. CUDA runs softmax,
log_softmax, layer_norm, group_norm, sum, cumsum, exp, log, pow, rsqrt... in fp32 where CPU
autocast leaves them in the input's (low) precision, and CPU casts some ops (cross_entropy_loss,
cat, stack, linear algebra, FFTs...) that CUDA leaves alone.

``CUDA_POLICY`` is CUDA's table: aten/src/ATen/autocast_mode.h (``AT_FORALL_LOWER_PRECISION_FP``,
``AT_FORALL_FP32``, ``AT_FORALL_FP32_SET_OPT_DTYPE``, ``AT_FORALL_DIFFERENT_REDISPATCH_SIGNATURE``,
``AT_FORALL_PROMOTE``) and autocast_mode.cpp (``TORCH_LIBRARY_IMPL(aten, Autocast, m)``: the
cudnn convolutions, binary_cross_entropy banned), read from pytorch/pytorch main of 2025-26
(the first lists that have ``rms_norm``); the Dimname overloads it names are not registered by
torch 2.13 and are left out. The installed torch's own ``AutocastCUDA`` registrations (compiled
into the CPU wheel too) are the check: tests/test_sim_cuda_paths.py asserts this table names
exactly the ops that have an ``AutocastCUDA`` kernel.

While active (:func:`cuda_autocast`), Python kernels on the ``AutocastCPU`` key give every op
CUDA's policy, cast as ``WrapFunction_`` does in autocast_mode.h, then redispatch with autocast
excluded:

- an op in CUDA's table whose CPU kernel already has the same policy (``SAME_ON_CPU``) keeps
  CPU's C++ kernel (and its cast cache);
- an op in CUDA's table with another or no CPU policy gets a kernel with CUDA's policy;
- an op CPU autocast casts and CUDA does not gets a kernel that runs it uncast (CUDA's
  fallthrough).

``lower_precision_fp`` casts use a cache like ``cached_cast`` (autocast_mode.cpp): an fp32 leaf
that requires grad is cast once per autocast region (cleared where torch clears its own, in
``torch.clear_autocast_cache``). The lower precision dtype is the region's
(``torch.get_autocast_dtype("cpu")``), as CUDA's is ``torch.get_autocast_dtype("cuda")``.
"""
from __future__ import annotations

import contextlib
import functools
import warnings
import weakref
from typing import Iterator

import torch
from torch.utils._pytree import tree_map

LOWER, FP32, SET_OPT_DTYPE, APPEND_DTYPE, PROMOTE, BANNED = (
    "lower_precision_fp", "fp32", "fp32_set_opt_dtype", "fp32_append_dtype", "promote", "banned")

_LISTS = {
    LOWER: """_convolution.deprecated _convolution conv1d conv2d conv3d conv_tbc conv_transpose1d
        conv_transpose2d.input conv_transpose3d.input convolution prelu addmm addmv addr matmul einsum
        mm mv linalg_vecdot linear addbmm baddbmm bmm chain_matmul linalg_multi_dot _thnn_fused_lstm_cell
        _thnn_fused_gru_cell lstm_cell gru_cell rnn_tanh_cell rnn_relu_cell
        _scaled_dot_product_flash_attention scaled_dot_product_attention
        cudnn_convolution cudnn_convolution_transpose""",
    FP32: """acos asin cosh erfinv exp expm1 log log10 log2 log1p reciprocal rsqrt sinh tan
        pow.Tensor_Scalar pow.Tensor_Tensor pow.Scalar softplus layer_norm native_layer_norm rms_norm
        group_norm frobenius_norm.dim nuclear_norm nuclear_norm.dim cosine_similarity poisson_nll_loss
        cosine_embedding_loss nll_loss nll_loss2d hinge_embedding_loss kl_div l1_loss smooth_l1_loss
        huber_loss mse_loss margin_ranking_loss multilabel_margin_loss soft_margin_loss
        triplet_margin_loss multi_margin_loss binary_cross_entropy_with_logits dist pdist cdist renorm
        logsumexp upsample_nearest1d _upsample_nearest_exact1d upsample_nearest2d
        _upsample_nearest_exact2d upsample_nearest3d _upsample_nearest_exact3d upsample_linear1d
        upsample_bilinear2d _upsample_bilinear2d_aa upsample_trilinear3d upsample_bicubic2d
        _upsample_bicubic2d_aa""",
    SET_OPT_DTYPE: """prod prod.dim_int softmax.int log_softmax.int cumprod cumsum linalg_vector_norm
        linalg_matrix_norm linalg_matrix_norm.str_ord sum sum.dim_IntList""",
    APPEND_DTYPE: "norm.Scalar norm.ScalarOpt_dim",
    PROMOTE: "addcdiv addcmul atan2 bilinear cross dot vdot grid_sampler index_put tensordot scatter_add",
    BANNED: "binary_cross_entropy",
}
CUDA_POLICY: dict[str, str] = {op: policy for policy, ops in _LISTS.items() for op in ops.split()}

# ops whose AutocastCPU kernel (autocast_mode.cpp, TORCH_LIBRARY_IMPL(aten, AutocastCPU, m))
# applies the same policy as CUDA's: kept as they are
SAME_ON_CPU = frozenset("""_convolution.deprecated conv1d conv2d conv3d conv_tbc conv_transpose1d
    conv_transpose2d.input conv_transpose3d.input prelu addmm matmul mm linalg_vecdot linear addbmm baddbmm
    bmm scaled_dot_product_attention cdist poisson_nll_loss cosine_embedding_loss nll_loss nll_loss2d
    hinge_embedding_loss kl_div l1_loss smooth_l1_loss huber_loss mse_loss margin_ranking_loss
    multilabel_margin_loss soft_margin_loss triplet_margin_loss multi_margin_loss
    binary_cross_entropy_with_logits""".split())

# norm's fp32_append_dtype: the overload without a dtype redispatches to the one with
_APPEND_TARGET = {"norm.Scalar": "norm.ScalarOpt_dtype", "norm.ScalarOpt_dim": "norm.ScalarOpt_dim_dtype"}
_BANNED_MESSAGE = (
    "torch.nn.functional.binary_cross_entropy and torch.nn.BCELoss are unsafe to autocast.\n"
    "Many models use a sigmoid layer right before the binary cross entropy layer.\n"
    "In this case, combine the two layers using torch.nn.functional.binary_cross_entropy_with_logits\n"
    "or torch.nn.BCEWithLogitsLoss.  binary_cross_entropy_with_logits and BCEWithLogits are\n"
    "safe to autocast.")
_NO_AUTOCAST = torch._C.DispatchKeySet(torch._C.DispatchKey.AutocastCPU) | \
    torch._C.DispatchKeySet(torch._C.DispatchKey.AutocastCUDA)


def overload(name: str):
    base, _, over = name.partition(".")
    return getattr(getattr(torch.ops.aten, base), over or "default")


def registered(name: str, key: str) -> bool:
    """Whether the installed torch has a kernel for aten op ``name`` at dispatch ``key``."""
    qualified = "aten::" + name.removesuffix(".default")
    return torch._C._dispatch_has_kernel_for_dispatch_key(qualified, key)


def _eligible(t) -> bool:
    """autocast_mode.h ``is_eligible``: a defined floating-point tensor of the device, not double."""
    return isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype != torch.float64


class _CastCache:
    """``cached_cast``'s cache: lower-precision casts of fp32 leaves that require grad."""

    def __init__(self):
        self._casts: dict[int, tuple[weakref.ref, torch.Tensor]] = {}

    def cast(self, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        if not _eligible(t) or t.dtype == dtype:
            return t
        cacheable = (dtype == torch.get_autocast_dtype("cpu") and t.dtype == torch.float32 and t.requires_grad
                     and t.is_leaf and not t._is_view() and torch.is_autocast_cache_enabled())
        if not cacheable:
            return t.to(dtype)
        hit = self._casts.get(id(t))
        if hit is not None and hit[0]() is t:
            return hit[1]
        casted = t.to(dtype)
        self._casts[id(t)] = (weakref.ref(t), casted)
        return casted

    def clear(self) -> None:
        self._casts.clear()


def _promote_type(args, lower: torch.dtype) -> torch.dtype:
    """autocast_mode.h ``promote_type``: fp32 if any eligible argument is fp32, else lower."""
    current = lower
    for t in torch.utils._pytree.tree_leaves(args):
        if _eligible(t) and (current == torch.float32 or t.dtype == torch.float32):
            current = torch.float32
    return current


def _kernel(name: str, policy: str, cache: _CastCache):
    op = overload(name)
    schema_args = op._schema.arguments

    def cast_all(dtype, args, kwargs):
        return tree_map(lambda t: cache.cast(t, dtype) if isinstance(t, torch.Tensor) else t, (args, kwargs))

    def kernel(*args, **kwargs):
        with torch._C._ExcludeDispatchKeyGuard(_NO_AUTOCAST):
            lower = torch.get_autocast_dtype("cpu")
            if policy == LOWER:
                args, kwargs = cast_all(lower, args, kwargs)
            elif policy == FP32:
                args, kwargs = cast_all(torch.float32, args, kwargs)
            elif policy == PROMOTE:
                args, kwargs = cast_all(_promote_type((args, kwargs), lower), args, kwargs)
            elif policy == SET_OPT_DTYPE and _eligible(args[0]):
                index = next(i for i, a in enumerate(schema_args) if a.name == "dtype")
                if index < len(args):
                    args = (*args[:index], args[index] if args[index] is not None else torch.float32, *args[index + 1:])
                elif kwargs.get("dtype") is None:
                    kwargs = {**kwargs, "dtype": torch.float32}
            elif policy == APPEND_DTYPE:
                dtype = torch.float32 if _eligible(args[0]) else args[0].dtype
                given = {**dict(zip((a.name for a in schema_args), args)), **kwargs}
                full = [given.get(a.name, a.default_value) for a in schema_args]
                return overload(_APPEND_TARGET[name])(*full, dtype=dtype)
            elif policy == BANNED:
                raise RuntimeError(_BANNED_MESSAGE)
            return op(*args, **kwargs)

    return kernel


def _passthrough(name: str):
    """CUDA's fallthrough: skip this op's AutocastCPU kernel only; a composite op's inner ops
    still meet autocast, as they do on CUDA (the keyset is redispatched without AutocastCPU,
    nothing is excluded)."""
    op = overload(name)

    def kernel(keyset, *args, **kwargs):
        return op.redispatch(keyset.remove(torch._C.DispatchKey.AutocastCPU), *args, **kwargs)

    return kernel


@functools.cache
def cpu_only_ops() -> tuple[str, ...]:
    """Ops CPU autocast casts that CUDA autocast leaves alone (from the installed torch)."""
    ours = {("aten::" + n.removesuffix(".default")) for n in CUDA_POLICY}
    names = [n for n in torch._C._dispatch_get_all_op_names() if n.startswith("aten::") and n not in ours]
    return tuple(sorted(n.removeprefix("aten::") for n in names
                        if torch._C._dispatch_has_kernel_for_dispatch_key(n, "AutocastCPU")))


@contextlib.contextmanager
def cuda_autocast() -> Iterator[None]:
    """While active, ``torch.autocast("cpu")`` casts as CUDA autocast does (see the module doc)."""
    cache = _CastCache()
    clear = torch.clear_autocast_cache
    lib = torch.library.Library("aten", "IMPL")

    def clear_autocast_cache():
        cache.clear()
        clear()

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="(?s).*Overriding a previously registered kernel.*")
            for name in cpu_only_ops():
                lib.impl(name, _passthrough(name), "AutocastCPU", with_keyset=True)
            for name, policy in CUDA_POLICY.items():
                if name not in SAME_ON_CPU and registered(name, "AutocastCUDA"):
                    lib.impl(name, _kernel(name, policy, cache), "AutocastCPU")
        torch.clear_autocast_cache = clear_autocast_cache
        yield
    finally:
        torch.clear_autocast_cache = clear
        lib._destroy()
        cache.clear()
