"""What the driver sees (NVML, from nvidia-ml-py): device total, driver, this process's usage.

Silently absent (None) where there is no driver or no nvidia-ml-py.
"""
from __future__ import annotations

import os


def _handle(index: int):
    import pynvml

    pynvml.nvmlInit()
    return pynvml, pynvml.nvmlDeviceGetHandleByIndex(index)


def device_info(index: int = 0) -> dict | None:
    try:
        pynvml, handle = _handle(index)
        name = pynvml.nvmlDeviceGetName(handle)
        return {
            "name": name.decode() if isinstance(name, bytes) else name,
            "total_bytes": int(pynvml.nvmlDeviceGetMemoryInfo(handle).total),
            "driver": _text(pynvml.nvmlSystemGetDriverVersion()),
        }
    except Exception:  # no driver, no library, no device: NVML is optional
        return None


def process_used_bytes(index: int = 0) -> int | None:
    """Device memory NVML attributes to this process (context + allocator + libraries)."""
    try:
        pynvml, handle = _handle(index)
        for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
            if proc.pid == os.getpid() and proc.usedGpuMemory is not None:
                return int(proc.usedGpuMemory)
    except Exception:
        return None
    return None


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
