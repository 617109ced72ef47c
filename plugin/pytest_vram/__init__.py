"""pytest-vram: measure GPU memory in pytest, over named phases of a test.

The names below load on first use (PEP 562), so that the history side (``pytest_vram.sizes``,
``pytest_vram.schema``, the ``pytest-vram`` command) imports no torch.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "Meter": "meter", "PhaseOOM": "meter", "PhaseResult": "meter",
    "PROFILES": "profiles", "GpuProfile": "profiles", "get_profile": "profiles",
    "format_bytes": "sizes", "parse_size": "sizes",
}
__all__ = list(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'pytest_vram' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
