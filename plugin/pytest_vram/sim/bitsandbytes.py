"""Shim: bitsandbytes' quantized parameters under fake tensors.

bitsandbytes registers fake (meta) kernels for its ops, so 4-bit and 8-bit matmuls, the
quantizers and the 8-bit optimizers' updates run under FakeTensorMode as they are. Two things
do not:

- ``Params4bit`` and ``Int8Params`` are ``nn.Parameter`` subclasses made with
  ``Tensor._make_subclass``, which refuses a FakeTensor ("the raw Tensor object is already
  associated to a python object of type FakeTensor"). torch's own ``nn.Parameter`` handles a
  fake tensor by returning it detached and marked ``_is_param``; the shim does the same and
  sets the subclass's attributes (``quant_state``, ``blocksize``, ``CB``, ``SCB``...) on it,
  so ``Linear4bit``/``Linear8bitLt`` and peft's bnb layers find what they read. The weight is
  then a plain tensor, not an instance of the subclass: code that needs its methods calls
  them unbound.
- the 8-bit dynamic code maps are computed with ``.tolist()``, which has no value under fake
  tensors. Double quantization's map is cached module-wide on first use: it is built for real
  beforehand (1 KiB), and while the simulator runs it is held as a fake tensor of its mode,
  made before the tracker starts (so, as before, not counted), as on the GPU, where it is a
  device tensor (functional.py ``name2qmap["dynamic"] = create_dynamic_map().to(A.device)``):
  ``quantize_blockwise`` then passes the kernel a fake tensor, which FakeTensor's dispatch
  cache accepts, instead of a real one that torch converts to a fake on every call (and
  refuses to cache: "non-fake tensor"); the layer's own copy (``code.to(A.device,
  copy=True)``) is a new 1 KiB storage either way. The 8-bit optimizers build two maps each
  at construction: the shim computes them for real and returns a fake copy, which the tracker
  counts like the device copy the optimizer keeps.

Not modelled, a device branch of bitsandbytes' own: in training, ``bnb.matmul`` (8-bit,
autograd/_functions.py ``matmul``) runs ``MatMul8bitFp`` for CPU tensors (the weight dequantized
to a full fp16 temporary per call) and ``MatMul8bitLt`` on CUDA (the input quantized to int8,
plus the outlier columns ``subA`` kept for backward). Both keep the input for backward; the
transients differ, and the CUDA path's outlier count depends on the activations' values
(``int8_vectorwise_quant``'s fake kernel asks for a dynamic size), which a simulation does not
have: the simulator keeps the CPU path for 8-bit training.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import sys
from types import ModuleType
from typing import Iterator

import torch
from torch._guards import detect_fake_mode
from torch._subclasses.fake_tensor import FakeTensor, unset_fake_temporarily

# the subclass attributes, with bitsandbytes' defaults
_ATTRIBUTES = {
    "Params4bit": {"quant_state": None, "blocksize": 64, "compress_statistics": True, "quant_type": "fp4",
                   "quant_storage": torch.uint8, "module": None, "bnb_quantized": False},
    "Int8Params": {"CB": None, "SCB": None, "has_fp16_weights": False},
}


def import_bitsandbytes() -> ModuleType:
    """Import bitsandbytes with the ``torch.compile`` of its CPU kernels deferred to their first call.

    bitsandbytes 0.50.2 compiles four of its default (CPU) kernels when it is imported
    (backends/default/ops.py, ``_try_torch_compile``: ``compiled_fn = torch.compile(fn)`` at
    decoration time, the call falling back to ``fn`` if the compiled one raises). ``torch.compile``
    imports dynamo and inductor (about 1.4 s of a 2-core machine's start-up, more than all of
    torch). The simulator never calls those kernels (their fake kernels run instead), so the
    compile is made where the decorator would first use it: at the kernel's first real call, with
    the same arguments (:func:`compile_on_first_call`). What the kernels compute, and the
    fallback, are bitsandbytes' own. A bitsandbytes already imported is returned as it is. The
    simulator's own shims import it this way too, so a project that never imports the suite's
    fixtures starts without inductor as well.
    """
    if "bitsandbytes" in sys.modules:
        return sys.modules["bitsandbytes"]
    with compile_on_first_call():
        return importlib.import_module("bitsandbytes")


@contextlib.contextmanager
def compile_on_first_call() -> Iterator[None]:
    """Within it, ``torch.compile(fn, **options)`` (or its decorator form) returns ``fn``'s
    wrapper that calls the real ``torch.compile(fn, **options)`` at its first call and the
    compiled function from then on."""
    real_compile = torch.compile

    def deferred(model=None, **options):
        if model is None:
            return functools.partial(deferred, **options)
        compiled = None

        @functools.wraps(model)
        def first_call(*args, **kwargs):
            nonlocal compiled
            if compiled is None:
                compiled = real_compile(model, **options)
            return compiled(*args, **kwargs)

        return first_call

    torch.compile = deferred
    try:
        yield
    finally:
        torch.compile = real_compile


def build_code_maps() -> None:
    """Build for real the tables bitsandbytes computes from Python lists on first use."""
    from bitsandbytes.functional import create_dynamic_map, name2qmap

    if "dynamic" not in name2qmap:
        name2qmap["dynamic"] = create_dynamic_map()


def _fake_aware_new(original_new, defaults: dict):
    def __new__(cls_, data=None, requires_grad=False, *args, **kwargs):
        if not isinstance(data, FakeTensor):
            return original_new(cls_, data, requires_grad, *args, **kwargs)
        param = data.detach().requires_grad_(requires_grad)
        param._is_param = True
        for name, default in defaults.items():
            setattr(param, name, kwargs.get(name, default))
        return param
    return __new__


def _fake_aware_map(original):
    def create_dynamic_map(*args, **kwargs):
        if detect_fake_mode() is None:
            return original(*args, **kwargs)
        with unset_fake_temporarily():
            table = original(*args, **kwargs)
        return table.clone()  # under the fake mode: a fake copy, allocated like the device's
    return create_dynamic_map


@contextlib.contextmanager
def fake_quantized_params() -> Iterator[None]:
    """While active, bitsandbytes' parameter classes accept fake tensors (see the module doc)."""
    try:
        bnb = import_bitsandbytes()
    except ImportError:  # nothing to shim
        yield
        return
    build_code_maps()
    classes = [bnb.nn.Params4bit, bnb.nn.Int8Params]
    originals = {cls: cls.__dict__["__new__"] for cls in classes}
    create_dynamic_map = bnb.functional.create_dynamic_map
    try:
        for cls in classes:
            new = _fake_aware_new(originals[cls], _ATTRIBUTES[cls.__name__])
            cls.__new__ = staticmethod(new)
        bnb.functional.create_dynamic_map = _fake_aware_map(create_dynamic_map)
        yield
    finally:
        for cls, original in originals.items():
            cls.__new__ = original
        bnb.functional.create_dynamic_map = create_dynamic_map


@contextlib.contextmanager
def fake_code_map(mode) -> Iterator[None]:
    """While active, double quantization's module-wide code map is a fake tensor of ``mode``
    (see the module doc); enter it after the fake mode and before the storage tracker."""
    try:
        from bitsandbytes.functional import name2qmap
    except ImportError:  # nothing to shim
        yield
        return
    build_code_maps()
    real = name2qmap["dynamic"]
    name2qmap["dynamic"] = mode.from_tensor(real)
    try:
        yield
    finally:
        name2qmap["dynamic"] = real
