"""The simulator's FakeTensorMode: torch's own, with a cheaper way to the same dispatch-cache key.

FakeTensorMode caches each op's output metadata under a key made from the op and its
arguments (torch/_subclasses/fake_tensor.py, ``_cached_dispatch_impl`` / ``_cache_key``). On
a LLaMA-7B QLoRA case ~87% of the cacheable dispatches hit (18.1k of 20.8k), so the cache
stays on; but building the key was a third of a case's time, most of it in
``_prep_args_for_hash`` turning each FakeTensor argument into a ``TensorMetadata`` dataclass
and flattening that field by field (``dataclasses.fields``, a recursive call per shape and
stride, three ``is_sparse_any`` checks).

:class:`SimFakeTensorMode` appends, for a plain strided FakeTensor of this mode with concrete
sizes, the values ``extract_tensor_metadata(t)._flatten_into`` appends, in the same order, read
straight off the tensor and held in one tuple marked as this class's (instead of some twenty
elements: ``(int, size)`` per dimension); every other argument (symbolic sizes, sparse layouts,
constants, foreign tensors, containers, functions) takes torch's own code. A key is therefore
torch's key with each plain tensor's run of elements re-spelled one to one
(``tests/test_speed_fake_mode.py`` expands the tuples back and compares the keys element for
element): two calls share a key exactly when torch would give them one. The marker keeps these
keys apart from a plain FakeTensorMode's in the class-wide cache, so neither ever meets the
other's entries. Nothing about what the op returns changes: only how fast its key is spelled.

torch also refuses to cache any op outside aten/prim (``_validate_cache_key``: "non-builtin"),
since a custom op's fake kernel may do anything. bitsandbytes' 4-bit and blockwise kernels
(:data:`PURE_CUSTOM_OPS`) each return fresh ``torch.empty``/``empty_like`` tensors whose
metadata is a function of the arguments' metadata and the ints/strings/dtypes passed, and
nothing else (no value read, no dynamic size, no alias, no side effect), which is exactly what
the cache records; :class:`SimFakeTensorMode` caches them, under keys marked as its own so that
a plain FakeTensorMode sharing the class-wide cache never meets such an entry.

``aten._unsafe_view`` (what ``reshape``/``matmul`` emit, ~7% of an SDXL step's ops) is
refused too ("unsafe view": its schema hides the alias, so a cached output would get a storage
of its own). Under FakeTensorMode it is ``aten.view`` by torch's own definition: the fake
kernel registered for both is one function (torch/_subclasses/fake_impls.py ``_view_meta``,
``@register_op_impl(aten.view.default)`` and ``(aten._unsafe_view.default)``), and its
decomposition is ``aten.view(x, shape)`` (torch/_decomp/decompositions.py
``_reshape_alias``); the simulator dispatches it as ``aten.view``, which the cache holds with
its alias (the output shares the input's storage, as ``_unsafe_view``'s does).

Two more steps of each op are spelled shorter, with the same effect: ``dispatch`` goes straight
to the cache when torch's would (no debug logging on, not one of the ops it answers itself),
without torch's per-op ``with no_dispatch(): log.debug(...)``; and a cache hit's output is made
as ``_get_output_tensor_from_cache_entry`` makes it (``torch.empty_strided`` on meta inside
``in_kernel_invocation_manager``'s guards, the input's storage set for a view,
``FakeTensor(mode, empty, device)``), with that generator context manager written out inline;
anything else (a shape environment, conjugate or negative bits, an in-place or constant
output) takes torch's code.
"""
from __future__ import annotations

import contextlib
import logging

import torch
from torch._prims_common import suggest_memory_format
from torch._subclasses import fake_tensor
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode, _DispatchCacheKey

from .fake_construction import LIFT_IDS, lift_plain, new_fake_tensor

_STRIDED = torch.strided
_CONTIGUOUS = torch.contiguous_format
_OpOverload = torch._ops.OpOverload
_C = torch._C
# the ops torch's dispatch answers before its cache (by id: OpOverload hashes in Python)
_ANSWERED_BY_TORCH = frozenset(map(id, (*fake_tensor._DISPATCH_META_HANDLERS, *fake_tensor._DISPATCH_HANDLE_DIRECTLY)))

# bitsandbytes 0.50.2, bitsandbytes/_ops.py: the fake kernels (``register_fake``) of these ops
# only check their arguments and return new ``torch.empty(...)`` / ``torch.empty_like(A,
# dtype=...)`` tensors shaped from the arguments' shapes and the ints passed (``shape``,
# ``blocksize``, ``quant_storage``): quantize_4bit (out, absmax), dequantize_4bit,
# gemm_4bit, quantize_blockwise (out, absmax), dequantize_blockwise. The int8 ops are not
# here: some ask for a dynamic size (``new_dynamic_size``).
PURE_CUSTOM_OPS = frozenset({"bitsandbytes::quantize_4bit", "bitsandbytes::dequantize_4bit",
                             "bitsandbytes::gemm_4bit", "bitsandbytes::quantize_blockwise",
                             "bitsandbytes::dequantize_blockwise"})


def _pure_custom(func) -> bool:
    return getattr(func, "_name", None) in PURE_CUSTOM_OPS and getattr(func, "_overloadname", None) == "default"


def no_dynamo_guard(cls) -> bool:
    """``TorchDispatchMode._should_skip_dynamo`` answered False, for the simulator's modes.

    torch wraps every TorchDispatchMode subclass's ``__torch_dispatch__`` in
    ``torch._disable_dynamo(..., recursive=True)`` (torch/utils/_python_dispatch.py
    ``__init_subclass__``) so that a ``torch.compile`` in progress does not trace into the mode's
    frames; the wrapper swaps the frame evaluation callback twice per call (torch/_dynamo/
    eval_frame.py ``DisableContext.__call__._fn``), for every op that reaches the mode, about 6%
    of a simulated step. Nothing is compiled under the simulator (its fake tensors are not traced
    by dynamo), so its modes opt out through the hook torch gives for it (``_should_skip_dynamo``,
    whose docstring shows a mode returning False); the cpu and cuda backends' tracker keeps torch's
    guard."""
    return False


_UNSAFE_VIEW = torch.ops.aten._unsafe_view.default
_FAKE_KEY = _C._TorchDispatchModeKey.FAKE
_VIEW = torch.ops.aten.view.default


class SimFakeTensorMode(FakeTensorMode):
    _should_skip_dynamo = classmethod(no_dynamo_guard)

    # FakeTensorMode's own ``__torch_dispatch__`` without the ``torch._disable_dynamo`` wrapper
    # that TorchDispatchMode.__init_subclass__ put around it, nor torch/utils/_stats.py's
    # ``@count`` under it (a per-call tally in ``simple_call_counter``, statistics only)
    __torch_dispatch__ = FakeTensorMode.__dict__["__torch_dispatch__"].__wrapped__.__wrapped__

    def dispatch_as_below(self, func, types, args, kwargs):
        """What ``func(*args, **kwargs)`` does from a mode stacked on this one when ``types``
        (the argument subclasses the dispatcher found) are this mode's FakeTensors or none: the
        dispatcher unsets this mode (an infra mode: ``_unset_dispatch_mode``) while its
        ``__torch_dispatch__`` runs and sets it back after. Done here without going through the
        dispatcher again; anything else (another subclass, this mode not the one set) is
        ``func(*args, **kwargs)`` itself."""
        if any(kind is not FakeTensor for kind in types) or _C._get_dispatch_mode(_FAKE_KEY) is not self:
            return func(*args, **kwargs)
        _C._unset_dispatch_mode(_FAKE_KEY)
        try:
            out = self.__torch_dispatch__(func, types, args, kwargs)
        finally:
            _C._set_dispatch_mode(self)
        return func(*args, **kwargs) if out is NotImplemented else out

    def dispatch(self, func, types, args=(), kwargs=None):
        """torch's ``FakeTensorMode.dispatch`` when it would do more than look up the cache
        (debug logging, the ops it answers itself, the cache off); else that lookup."""
        ident = id(func)
        if ident in LIFT_IDS and not kwargs and len(args) == 1 and type(args[0]) is torch.Tensor:
            lifted = lift_plain(self, func, args[0])
            if lifted is not None:
                return lifted
        if ident in _ANSWERED_BY_TORCH or not self.cache_enabled or fake_tensor.log.getEffectiveLevel() <= logging.DEBUG:
            return super().dispatch(func, types, args, kwargs or {})
        return self._cached_dispatch_impl(func, types, args, kwargs or {})

    def _get_output_tensor_from_cache_entry(self, state, entry, key, func, args):
        """torch's, for a plain tensor output without a shape environment (whose cached sizes
        are then ints: torch's ``check_value`` returns them as they are)."""
        metadata = entry.metadata
        if metadata is None or entry.inplace_idx is not None or self.shape_env is not None \
                or metadata.layout is not _STRIDED or metadata.is_conj or metadata.is_neg:
            return super()._get_output_tensor_from_cache_entry(state, entry, key, func, args)
        view = args[entry.view_idx] if isinstance(func, _OpOverload) and func.is_view else None
        if view is not None and not isinstance(view, FakeTensor):
            raise AssertionError("view_arg must be a FakeTensor")
        # in_kernel_invocation_manager(self), inline (torch/_subclasses/fake_tensor.py)
        previous = self.in_kernel_invocation
        if _C._meta_in_tls_dispatch_include() != previous:
            raise AssertionError(f"{_C._meta_in_tls_dispatch_include()}, {previous}")
        with _C._DisableTorchDispatch():
            self.in_kernel_invocation = True
            with _C._PreserveDispatchKeyGuard():
                _C._set_meta_in_tls_dispatch_include(True)
                try:
                    empty = torch.empty_strided(metadata.shape, metadata.stride, dtype=metadata.dtype,
                                                layout=_STRIDED, device="meta",
                                                requires_grad=metadata.requires_grad)
                    if view is not None:
                        empty.set_(view.untyped_storage(), metadata.storage_offset, metadata.shape, metadata.stride)
                finally:
                    self.in_kernel_invocation = previous
        return new_fake_tensor(self, empty, metadata.device)

    def _cached_dispatch_impl(self, func, types, args, kwargs):
        """torch's, with ``aten._unsafe_view`` dispatched as the ``aten.view`` it is under a
        fake mode (see the module docstring)."""
        if func is _UNSAFE_VIEW:
            func = _VIEW
        return super()._cached_dispatch_impl(func, types, args, kwargs)

    def _cache_key(self, state, func, args, kwargs):
        """torch's key; for a :data:`PURE_CUSTOM_OPS` op, marked with this class first, so that
        only this mode (which caches them) finds its entries."""
        key = super()._cache_key(state, func, args, kwargs)
        if _pure_custom(func):
            return _DispatchCacheKey((SimFakeTensorMode, *key.key))
        return key

    def _validate_cache_key(self, func, args, kwargs) -> None:
        """torch's checks, except that a :data:`PURE_CUSTOM_OPS` op may be cached (it carries
        no tag that the checks look for, and is not a view)."""
        if _pure_custom(func):
            return
        super()._validate_cache_key(func, args, kwargs)

    def _prep_args_for_hash(self, result, args, state, id_hashed_objects) -> None:
        """torch's ``FakeTensorMode._prep_args_for_hash`` with a direct path for the common
        argument: a strided FakeTensor of this mode without symbolic sizes and without a
        constant. Containers are walked here (so their tensors take the direct path too), with
        the same ``type`` / ``length_N`` markers torch appends; anything else is handed to
        torch's implementation one argument at a time, wrapped in a 1-tuple whose two markers
        are dropped again, so its bytes in the key are torch's own."""
        kind = type(args)
        if kind in (list, tuple, dict) or isinstance(args, (list, tuple, dict)):
            result.append(kind)
            result.append(f"length_{len(args)}")
            if isinstance(args, dict):
                self._prep_args_for_hash(result, args.keys(), state, id_hashed_objects)
                self._prep_args_for_hash(result, args.values(), state, id_hashed_objects)
                return
        for arg in args:
            kind = type(arg)
            if kind is FakeTensor and arg.fake_mode is self and arg.constant is None \
                    and arg.layout is _STRIDED and not arg._has_symbolic_sizes_strides:
                _flatten_plain_fake(result, arg)
            elif kind in (int, float, bool, str, torch.dtype, torch.device, torch.layout,
                          torch.memory_format, type(None)):
                result.append(kind)
                result.append(arg)
            elif kind in (list, tuple) or kind is dict:
                self._prep_args_for_hash(result, arg, state, id_hashed_objects)
            else:
                start = len(result)
                super()._prep_args_for_hash(result, (arg,), state, id_hashed_objects)
                del result[start:start + 2]  # the 1-tuple's (tuple, "length_1") markers


def _flatten_plain_fake(result: list, t: FakeTensor) -> None:
    """One tuple holding what ``extract_tensor_metadata(t)._flatten_into(result, ...)`` appends
    for a strided, non-sparse tensor with concrete sizes, in the same order: the
    ``TensorMetadata`` fields that vary (dtype, shape, stride, device, memory format, storage
    offset, storage bytes, requires_grad, is_quantized, is_conj, is_neg, is_inference), led by
    this class as a marker; the fields torch spells as constants for such a tensor (strided
    layout, not sparse, no dense/sparse dims, no values) are left out. torch spells each shape
    and stride element as ``(int, value)`` and never appends a tuple as one element (it walks
    tuples), so the marked tuple is a one-to-one re-spelling of torch's run of elements:
    ``tests/test_speed_fake_mode.py`` expands it back and compares the result with torch's key."""
    shape = t.shape
    # suggest_memory_format answers contiguous_format for any strided tensor of another rank
    memory_format = suggest_memory_format(t) if len(shape) in (4, 5) else _CONTIGUOUS
    if not t.is_contiguous(memory_format=memory_format):
        memory_format = None
    result.append((SimFakeTensorMode, t.dtype, shape, t.stride(), t.device, memory_format, t.storage_offset(),
                   t.untyped_storage().nbytes(), t.requires_grad, t.is_quantized, t.is_conj(), t.is_neg(),
                   t.is_inference()))


@contextlib.contextmanager
def fake_tensors():
    """:class:`SimFakeTensorMode`, with ``torch.utils.swap_tensors`` clearing the fake
    converter's memo first: its weak references make ``Module.to()`` / ``.half()`` on fake
    parameters (and peft's adapter moves) fail with "_apply(): Couldn't swap"."""
    mode = SimFakeTensorMode(allow_non_fake_inputs=True)
    swap = torch.utils.swap_tensors

    def swap_tensors(t1, t2):
        mode.fake_tensor_converter.meta_converter.tensor_memo.clear()
        return swap(t1, t2)

    torch.utils.swap_tensors = swap_tensors
    try:
        with mode:
            yield mode
    finally:
        torch.utils.swap_tensors = swap
