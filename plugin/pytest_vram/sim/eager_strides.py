"""Output strides as eager PyTorch computes them, where FakeTensor's rules differ.

A tensor's strides decide what later ops do with memory: c10's memory-format checks read them
(``suggest_memory_format``, ``is_channels_last_strides_2d`` in c10/core/MemoryFormat.h), and
with them whether ``group_norm`` copies its input (``input.contiguous(memory_format)``,
aten/src/ATen/native/group_norm.cpp) and which layout a convolution returns. FakeTensor
computes strides with Python rules that agree with eager on every dimension of size above 1
but not always on a size-1 one, which those checks do read. Two such rules, each replaced
within :func:`eager_strides` by eager's:

- ``view``: eager takes ``at::detail::computeStride`` (aten/src/ATen/TensorUtils.cpp
  ``computeStride_impl``), FakeTensor torch._refs' ``_reshape_view_helper``. A [1, 64, 1024]
  tensor with strides (65536, 1, 64) viewed as [1, 64, 32, 32] (what diffusers'
  AttnProcessor2_0 does to a transposed attention output, batch 1) is (64, 1, 2048, 64) in eager,
  (65536, 1, 2048, 64) as a fake. The view is restrided (``as_strided`` over the same storage
  and offset) to the strides of ``_compute_stride``, torch's own Python port of
  ``computeStride_impl`` (torch/_subclasses/fake_impls.py). A view eager cannot make is left to
  torch's kernel, which raises as eager does.
- elementwise ops with a scalar operand: TensorIterator (aten/src/ATen/TensorIterator.cpp)
  gives a new output contiguous or channels-last strides only through its fast setup, which
  needs every operand of one shape (``compute_fast_setup_type``: ``all_ops_same_shape_``, false
  as soon as a 0-dim operand such as a wrapped Python number is present); otherwise it orders
  the dimensions by the inputs' strides (``reorder_dimensions``). The prims' elementwise meta
  (torch/_prims_common ``compute_elementwise_output_logical_to_physical_perm``) drops CPU
  scalars first and then takes the contiguous / channels-last short cut "following the fake
  fast path" anyway. Within the block, with a number or a CPU scalar tensor among the operands,
  the order is TensorIterator's (:func:`reorder_dimensions`, written out from the C++).

Shapes and storages are unchanged: only size-1 dimensions' strides can move (a size-1
dimension's stride never changes an element's address), and with them what c10 calls their
memory format. Found on SDXL's tiny twin with its text encoders trained: the VAE's attention
output, channels-last as a fake, contiguous-format for real, made the real ``group_norm`` copy
it (32 KiB at the step's peak); with both rules the twin's simulated bytes equal the real CPU
run's (tests/test_text_encoder.py), and ``tests/test_eager_strides.py`` compares strides
expression by expression. The simulator's dispatch-cache keys are spelled apart from a plain
FakeTensorMode's (:mod:`.fake_mode`), so outputs cached under these rules are found only by
the simulator's mode, which always runs under them (:class:`.backend.SimBackend`).
"""
from __future__ import annotations

import contextlib
from numbers import Number
from typing import Iterator

import torch
import torch._prims_common as prims_common
from torch._subclasses import fake_impls

_VIEWS = (torch.ops.aten.view.default, torch.ops.aten._unsafe_view.default)


def _with_eager_strides(view_meta):
    def view(fake_mode, func, a, *shape, **kwargs):
        out = view_meta(fake_mode, func, a, *shape, **kwargs)
        stride = fake_impls._compute_stride(a.shape, a.stride(), out.shape)
        if stride is None or tuple(stride) == out.stride():
            return out
        return out.as_strided(out.shape, stride, out.storage_offset())

    return view


def _without_fast_setup_for_scalars(perm):
    def logical_to_physical_perm(*tensors, _skip_checks=False, ambiguity_check=False):
        scalar = any(isinstance(t, Number) or (isinstance(t, torch.Tensor) and prims_common.is_cpu_scalar_tensor(t))
                     for t in tensors)
        if _skip_checks or ambiguity_check or not scalar:
            return perm(*tensors, _skip_checks=_skip_checks, ambiguity_check=ambiguity_check)
        prims_common.check_same_shape(*tensors, allow_cpu_scalar_tensors=True)
        tensors = tuple(t for t in tensors if isinstance(t, torch.Tensor) and not prims_common.is_cpu_scalar_tensor(t))
        if not tensors or tensors[0].ndim < 2 or any(t._has_symbolic_sizes_strides for t in tensors
                                                     if hasattr(t, "_has_symbolic_sizes_strides")):
            return perm(*tensors, _skip_checks=_skip_checks, ambiguity_check=ambiguity_check)
        return reorder_dimensions(tensors), False

    return logical_to_physical_perm


def reorder_dimensions(tensors: tuple[torch.Tensor, ...]) -> list[int]:
    """TensorIterator's dimension order for these inputs, slowest first (the logical-to-physical
    permutation prims use): aten/src/ATen/TensorIterator.cpp ``reorder_dimensions``, whose
    ``should_swap`` skips an operand where either stride is 0 (broadcast), orders by stride, and
    for equal strides puts the smaller size first; an insertion sort over dimensions initialized
    in reverse, read back reversed. The tensors are already broadcast to one shape (torch._refs
    expands them; an expanded dimension has stride 0, as TensorIterator's ``compute_strides``
    sets it)."""
    ndim, shape = tensors[0].ndim, tensors[0].shape

    def should_swap(dim0: int, dim1: int) -> int:
        for t in tensors:
            stride0, stride1 = t.stride()[dim0], t.stride()[dim1]
            if stride0 == 0 or stride1 == 0:
                continue
            if stride0 != stride1:
                return -1 if stride0 < stride1 else 1
            if shape[dim0] > shape[dim1]:
                return 1
        return 0

    perm = list(range(ndim))[::-1]
    for i in range(1, ndim):
        dim1 = i
        for dim0 in range(i - 1, -1, -1):
            comparison = should_swap(perm[dim0], perm[dim1])
            if comparison > 0:
                perm[dim0], perm[dim1] = perm[dim1], perm[dim0]
                dim1 = dim0
            elif comparison < 0:
                break
    return perm[::-1]


@contextlib.contextmanager
def eager_strides() -> Iterator[None]:
    """Within the block, fake ``view`` outputs and elementwise ops with a scalar operand get
    eager's strides (see the module docstring)."""
    table = fake_impls.op_implementations_dict
    views = {op: table[op] for op in _VIEWS}
    perm = prims_common.compute_elementwise_output_logical_to_physical_perm
    for op, view_meta in views.items():
        table[op] = _with_eager_strides(view_meta)
    prims_common.compute_elementwise_output_logical_to_physical_perm = _without_fast_setup_for_scalars(perm)
    try:
        yield
    finally:
        table.update(views)
        prims_common.compute_elementwise_output_logical_to_physical_perm = perm
