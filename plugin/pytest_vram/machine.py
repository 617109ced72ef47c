"""What a history says it was measured on (``machine_info`` of ``--vram-json``, and
``machine_info["vram"]`` of pytest-benchmark's files): backend, GPU, library versions."""
from __future__ import annotations

import os

from . import record, workers
from .profiles import GpuProfile


def describe(backend: str, profile: GpuProfile | None, libraries: list[str],
             xdist_workers: dict[str, dict]) -> dict:
    """``libraries``: the project's distributions to record (the ``pytest_vram_libraries``
    hook), beside the plugin's own; ``xdist_workers``: each worker's own description."""
    info = {"backend": backend, "libraries": record.library_versions(libraries)}
    if backend == "cuda":
        from .backends import CudaBackend

        info.update(CudaBackend.describe_device())
        info["cuda_visible_devices"] = os.environ.get(workers.VISIBLE)
    if profile:
        info["gpu_profile"] = profile.name
    if xdist_workers:
        info["xdist_workers"] = dict(sorted(xdist_workers.items()))
    return info
