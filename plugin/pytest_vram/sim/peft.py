"""Shim: peft's LoHa/LoKr module dropout under fake tensors.

In training mode peft's LoHa and LoKr layers decide whether to apply the adapter with
``if torch.rand(1) > module_dropout`` (even when module_dropout is 0). A fake tensor has no
value: the simulator's generic stand-in (:mod:`.value_reads`, zero) would read the comparison
as False and skip the adapter, allocating less than the real run. While the shim is active those two modules
see a ``torch`` whose ``rand(1)`` is drawn on the host with Python's ``random`` (seeded, so
runs are deterministic): the same decision rule, no device memory, as on a GPU where
``torch.rand(1)`` is a host tensor too. lycoris-lora guards its draws with
``if self.module_dropout`` and needs no shim.
"""
from __future__ import annotations

import contextlib
import importlib
import random
from typing import Iterator

import torch

MODULES = ("peft.tuners.loha.layer", "peft.tuners.lokr.layer")


class _HostRandTorch:
    """``torch``, except that ``rand(1)`` is a Python float in [0, 1)."""

    def __init__(self, seed: int = 0):
        self._random = random.Random(seed)

    def __getattr__(self, name):
        return getattr(torch, name)

    def rand(self, *size, **kwargs):
        if size in ((1,), ((1,),)) and not kwargs:
            return self._random.random()
        return torch.rand(*size, **kwargs)


@contextlib.contextmanager
def host_module_dropout(seed: int = 0) -> Iterator[None]:
    patched = []
    try:
        for name in MODULES:
            try:
                module = importlib.import_module(name)
            except ImportError:
                continue
            patched.append(module)
            module.torch = _HostRandTorch(seed)
        yield
    finally:
        for module in patched:
            module.torch = torch
