"""pytest-xdist: one worker per GPU, each pinned to its GPU before CUDA starts.

``-n auto`` starts one worker per visible GPU with the cuda backend (with sim or cpu, xdist's
own default: one per CPU core). Worker ``gwK`` gets the K-th visible GPU (modulo their count)
through ``CUDA_VISIBLE_DEVICES``, set in ``pytest_load_initial_conftests``: before any
conftest or library can start CUDA, which reads the variable once, when it starts.

Records reach the controller on the test reports (``user_properties``, which xdist ships with
every report, so a crashed worker loses nothing it had finished); each worker's description of
its device comes back through xdist's worker output.
"""
from __future__ import annotations

from typing import Callable, MutableMapping

WORKER = "PYTEST_XDIST_WORKER"
VISIBLE = "CUDA_VISIBLE_DEVICES"
PINNED_FROM = "PYTEST_VRAM_VISIBLE_BEFORE_PIN"


def is_controller(config) -> bool:
    return not hasattr(config, "workerinput")


def distributing(config) -> bool:
    """True in an xdist controller that hands tests to workers."""
    return config.getoption("dist", "no") != "no" and bool(config.getoption("tx", None))


def gpu_count_before_cuda() -> int:
    """GPUs on the machine, counted without starting CUDA in this process (NVML, else 0)."""
    from . import nvml

    return nvml.device_count() or 0


def visible_gpus(environ: MutableMapping[str, str], gpu_count: Callable[[], int] = gpu_count_before_cuda) -> list[str]:
    """The GPUs this process may use: ``CUDA_VISIBLE_DEVICES`` if set, else 0..gpu_count()-1
    (``gpu_count`` is asked only when the variable is unset)."""
    if VISIBLE in environ:
        return [d.strip() for d in environ[VISIBLE].split(",") if d.strip()]
    return [str(i) for i in range(gpu_count())]


def pin(environ: MutableMapping[str, str], gpu_count: Callable[[], int] = gpu_count_before_cuda) -> str | None:
    """In worker gwK, narrow ``CUDA_VISIBLE_DEVICES`` to the K-th visible GPU. Returns it, or
    None outside a worker or without a GPU. Pinning twice keeps the first choice."""
    worker = environ.get(WORKER)
    if not worker or PINNED_FROM in environ:
        return environ.get(VISIBLE) if worker else None
    gpus = visible_gpus(environ, gpu_count)
    if not gpus:
        return None
    environ[PINNED_FROM] = environ.get(VISIBLE, "")
    environ[VISIBLE] = gpus[int(worker.removeprefix("gw")) % len(gpus)]
    return environ[VISIBLE]


def auto_workers(backend: str, environ: MutableMapping[str, str]) -> int | None:
    """``-n auto``: one worker per visible GPU with the cuda backend; None (xdist's default,
    one per CPU core) otherwise, or where PYTEST_XDIST_AUTO_NUM_WORKERS says how many."""
    if backend != "cuda" or environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None
    return len(visible_gpus(environ)) or None


def sharing_warning(backend: str, workers: int, environ: MutableMapping[str, str]) -> str | None:
    """A warning when more workers than GPUs would share GPUs (and each other's memory)."""
    if backend != "cuda":
        return None
    gpus = len(visible_gpus(environ))
    if gpus and workers > gpus:
        return (f"{workers} xdist workers on {gpus} GPU(s): workers share GPUs, so a case can run "
                f"out of memory because of another; use -n {gpus} (or -n auto)")
    return None

