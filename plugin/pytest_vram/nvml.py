"""What the driver sees (NVML, from nvidia-ml-py): device total, driver, this process's usage
and other processes'.

Silently absent (None) where there is no driver or no nvidia-ml-py.
"""
from __future__ import annotations

import os


def _handle(index: int):
    """NVML's handle for torch's ``cuda:index``, found by UUID: NVML numbers every GPU on the
    machine, torch only the visible ones (CUDA_VISIBLE_DEVICES, as a pinned xdist worker has)."""
    import pynvml
    import torch

    pynvml.nvmlInit()
    try:
        uuid = str(torch.cuda.get_device_properties(index).uuid)
        return pynvml, pynvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith("GPU-") else f"GPU-{uuid}")
    except Exception:  # no UUID in this torch or driver: assume nothing is hidden
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


def device_count() -> int | None:
    """GPUs the driver sees (all of them: NVML ignores CUDA_VISIBLE_DEVICES); None without NVML."""
    try:
        import pynvml

        pynvml.nvmlInit()
        return int(pynvml.nvmlDeviceGetCount())
    except Exception:
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


def foreign_used_bytes(index: int = 0, pid: int | None = None) -> int | None:
    """Device memory held by processes other than ``pid`` (this one): the sum NVML gives per
    process, or, where it cannot name them (a container's PID namespace), the device's used
    memory less this process's. None without NVML."""
    pid = os.getpid() if pid is None else pid
    try:
        pynvml, handle = _handle(index)
        procs = (list(pynvml.nvmlDeviceGetComputeRunningProcesses(handle))
                 + list(pynvml.nvmlDeviceGetGraphicsRunningProcesses(handle)))
        others = [p for p in procs if p.pid != pid]
        if all(p.usedGpuMemory is not None for p in others):
            return sum(int(p.usedGpuMemory) for p in others)
        own = sum(int(p.usedGpuMemory or 0) for p in procs if p.pid == pid)
        return max(int(pynvml.nvmlDeviceGetMemoryInfo(handle).used) - own, 0)
    except Exception:
        return None


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
