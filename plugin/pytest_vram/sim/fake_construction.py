"""How the simulator's FakeTensorMode (:mod:`.fake_mode`) makes fake tensors: as torch's code
makes them, with fewer steps.

- :func:`new_fake_tensor`: ``FakeTensor(mode, elem, device)`` with its instance attributes
  written at once (a cache hit's output, ~18k per LLaMA-7B QLoRA case);
- :func:`lift_plain`: ``torch.tensor(data)``'s lift of a fresh CPU tensor without
  MetaConverter's tensor description, with what ``from_real_tensor`` registers.

``tests/test_speed_fake_mode.py`` compares each with torch's own, attribute for attribute and
in what happens to the tensor afterwards.
"""
from __future__ import annotations

import torch
from torch._subclasses import fake_tensor
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

_STRIDED = torch.strided
_C = torch._C
# torch's lift ops (``FakeTensorMode.lift_fns``: what ``torch.tensor(data)`` dispatches), by id
LIFT_IDS = frozenset(map(id, FakeTensorMode.lift_fns))


def lift_plain(mode: FakeTensorMode, func, real: torch.Tensor) -> FakeTensor | None:
    """``torch.tensor(data)``'s lift of its fresh CPU tensor, as torch's ``_dispatch_impl``
    does it for a plain one (no shape environment; strided, dense, contiguous, not a view,
    no autograd, conjugate, negative or inference bit, not yet converted): ``func`` run on the
    real tensor; an output of at most ``CONSTANT_NUMEL_LIMIT`` elements cloned and kept as the
    fake tensor's ``constant`` (what ``.item()`` reads back), its storage registered with the
    converter (``add_constant_storage_mapping``: a later write, or an op whose output may alias
    it and is no constant, drops the value); else the input converted; the converter's tensor
    memo and MetaConverter's storage memo set for what was converted, as ``from_real_tensor``
    does. The fake tensor is made as ``MetaConverter`` makes it for such a tensor
    (``empty_strided`` on meta of the same sizes, strides and dtype, then ``FakeTensor(mode,
    meta, device)``), without MetaConverter's tensor description, which was ~8% of a QLoRA case
    (bitsandbytes' ``get_4bit_type`` per weight, AdamW's step counters). None for anything
    else: torch's path."""
    if mode.shape_env is not None or real.layout is not _STRIDED or real.device.type != "cpu" \
            or real.requires_grad or real._is_view() or real.storage_offset() != 0 or not real.is_contiguous() \
            or real.is_quantized or real.is_conj() or real.is_neg() or real.is_inference() \
            or fake_tensor.FakeTensorConfig.debug:
        return None
    converter = mode.fake_tensor_converter
    if converter._get_memo(real) is not None:
        return None
    with fake_tensor.no_dispatch():
        out = func(real)
        constant = out.clone() if mode.may_turn_const(out) else None
        source = real if constant is None else constant
        meta = torch.empty_strided(source.shape, source.stride(), dtype=source.dtype, device="meta")
    fake = new_fake_tensor(mode, meta, source.device)
    fake.constant = constant
    if constant is not None:  # so that a write to, or a non-constant alias of, it drops the value
        converter.add_constant_storage_mapping(fake)
    converter.set_tensor_memo(source, fake)
    # MetaConverter's storage memo: a later conversion of a view of ``source`` (constant
    # propagation through a view of the constant) shares this fake tensor's storage
    meta_converter = converter.meta_converter
    meta_converter.storage_memo[meta_converter.describer.get_storage_id(source.untyped_storage())] = \
        fake.untyped_storage()
    return fake


# what FakeTensor.__new__'s ``self.nonzero_memo = None`` ... ``self.nested_int_memo = None`` store:
# SymNumberMemoDescriptor.__set__(obj, None) sets ``_<name>``, ``_<name>_vc``, ``_<name>_epoch`` to None
_MEMOS_CLEARED = {f"_{name}{suffix}": None
                  for name, attr in vars(FakeTensor).items() if isinstance(attr, fake_tensor.SymNumberMemoDescriptor)
                  for suffix in ("", "_vc", "_epoch")}


# an indexed device normalizes to itself (``_normalize_fake_device``), once its accelerator is
# initialised (``init_gpu_context``, the first time): kept after that first call
_NORMALIZED: dict[torch.device, torch.device] = {}


def new_fake_tensor(mode: FakeTensorMode, elem: torch.Tensor, device: torch.device) -> FakeTensor:
    """``FakeTensor(mode, elem, device)`` for a meta ``elem`` and a non-meta device, as
    torch/_subclasses/fake_tensor.py ``FakeTensor.__new__`` makes it: ``Tensor._make_subclass``
    with the fake device's dispatch keys, the mutable-data-pointer flag, then the same instance
    attributes (the device normalized, once per indexed device, the memo descriptors' slots None), written into
    the instance's dict at once instead of through the descriptors (15 ``setattr`` calls per
    tensor). Anything else (torch's debug traces, a meta device) takes torch's constructor.
    ``tests/test_speed_fake_mode.py`` compares the two tensors attribute by attribute."""
    normalized = _NORMALIZED.get(device)
    if normalized is None:
        normalized = FakeTensor._normalize_fake_device(device)
        if device.index is not None:
            _NORMALIZED[device] = normalized
    device = normalized
    if fake_tensor.FakeTensorConfig.debug or device.type == "meta" or elem.device.type != "meta":
        return FakeTensor(mode, elem, device)
    t = torch.Tensor._make_subclass(FakeTensor, elem, elem.requires_grad, dispatch_device=True,
                                    device_for_backend_keys=device)
    if not mode._allow_unsafe_data_ptr_access:
        _C._set_throw_on_mutable_data_ptr(t)
    else:
        _C._set_warn_deprecated_on_mutable_data_ptr(t)
    attributes = t.__dict__
    attributes["_fake_device"] = device
    attributes["fake_mode"] = mode
    attributes["constant"] = attributes["pytype"] = attributes["dispatch_keys"] = attributes["real_tensor"] = None
    attributes.update(_MEMOS_CLEARED)
    return t
