"""Measurement backends: ``cpu`` (real execution on CPU, storage tracker) and ``cuda``
(torch.cuda allocator statistics and NVML), side by side; the ``sim`` backend lives in
:mod:`pytest_vram.sim`. Each implements :class:`.backend_protocol.Backend` and enforces the
budget as :mod:`.budget` says.
"""
from __future__ import annotations

import gc

import torch

from . import nvml
from .budget import allocation_limit, check_allocation
from .backend_protocol import Backend
from .meter import PhaseResult
from .profiles import GpuProfile
from .schema import BACKENDS  # noqa: F401  (re-exported)
from .tracker import StorageTracker


class CpuBackend:
    """Real execution on CPU tensors. No caching allocator: ``reserved`` is None, and a phase's
    total adds the emulated profile's typical CUDA context to its peak. The budget is enforced
    by the tracker: a new storage that takes the live bytes past the budget less the context
    raises ``torch.OutOfMemoryError`` (:func:`.budget.check_allocation`)."""

    name = "cpu"
    executes = True
    torch_device = "cpu"

    def __init__(self, profile: GpuProfile | None, budget: int | None = None):
        self.profile = profile
        self.context = profile.context_bytes if profile else 0
        self.allocation_cap = allocation_limit(budget, self.context)
        self.tracker = StorageTracker(on_alloc=self._check)

    def _check(self, key: int, nbytes: int) -> None:
        check_allocation(self.tracker.live_bytes, nbytes, self.allocation_cap, "cpu backend:")

    def start(self) -> None:
        self.tracker.__enter__()

    def stop(self) -> None:
        self.tracker.__exit__(None, None, None)

    def begin_phase(self) -> None:
        self.tracker.mark()

    def end_phase(self, name: str, oom: bool) -> PhaseResult:
        t = self.tracker
        return PhaseResult(name, t.live_bytes, t.peak_bytes, None, self.context, t.breakdown_at_peak(), oom)

    def release(self) -> None:
        gc.collect()

    def held_bytes(self, leftovers) -> int:
        """Memory held before this test starts: what earlier tests left alive."""
        return leftovers.bytes


class CudaBackend:
    """torch.cuda statistics, reset per phase; NVML for the context the allocator cannot see;
    the storage tracker for the breakdown only.

    The budget is enforced by the real allocator: where the budget less the measured context is
    below the card's memory, the allocator is capped there
    (``set_per_process_memory_fraction``), so an OOM happens where it would on a card of that
    budget (the profile's card, or an explicit ``vram_budget``).
    """

    name = "cuda"
    executes = True

    def __init__(self, profile: GpuProfile | None, budget: int | None = None, device: int = 0):
        self.profile = profile
        self.device = device
        self.torch_device = f"cuda:{device}"
        self.tracker = StorageTracker()
        torch.zeros(1, device=self.torch_device)  # start the context
        self.device_total = torch.cuda.get_device_properties(device).total_memory
        used = nvml.process_used_bytes(device)
        measured = used - torch.cuda.memory_reserved(device) if used is not None else None
        typical = profile.context_bytes if profile else 0
        self.context = measured if measured is not None else typical
        cap = allocation_limit(budget, self.context)
        self.allocation_cap = cap if cap is not None and cap < self.device_total else None

    def start(self) -> None:
        if self.allocation_cap is not None:
            torch.cuda.set_per_process_memory_fraction(self.allocation_cap / self.device_total, self.device)
        self.tracker.__enter__()

    def stop(self) -> None:
        self.tracker.__exit__(None, None, None)
        if self.allocation_cap is not None:
            torch.cuda.set_per_process_memory_fraction(1.0, self.device)

    def begin_phase(self) -> None:
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        self.tracker.mark()

    def end_phase(self, name: str, oom: bool) -> PhaseResult:
        torch.cuda.synchronize(self.device)
        peak = torch.cuda.max_memory_allocated(self.device)
        breakdown = self.tracker.breakdown_at_peak()
        # the allocator rounds every block; the rounding counts as activations/temporaries
        breakdown["activations"] += peak - sum(breakdown.values())
        requested = torch.cuda.memory_stats(self.device).get("requested_bytes.all.peak")
        return PhaseResult(name, torch.cuda.memory_allocated(self.device), peak,
                           torch.cuda.max_memory_reserved(self.device), self.context, breakdown, oom, requested)

    def release(self) -> None:
        gc.collect()
        torch.cuda.empty_cache()

    def held_bytes(self, leftovers) -> int:
        """Memory held before this test starts: everything allocated on the device."""
        return torch.cuda.memory_allocated(self.device)

    @staticmethod
    def describe_device(device: int = 0) -> dict:
        props = torch.cuda.get_device_properties(device)
        info = {"gpu_name": props.name, "gpu_total_bytes": int(props.total_memory),
                "compute_capability": f"{props.major}.{props.minor}", "cuda": torch.version.cuda}
        driver = nvml.device_info(device)
        if driver:
            info["driver"] = driver["driver"]
        return info


def resolve_backend_name(name: str) -> str:
    """``auto`` is cuda where a CUDA GPU is present, else the simulator."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; valid choices: {', '.join(BACKENDS)}")
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "sim"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--vram-backend=cuda: no CUDA GPU is visible to torch; use 'sim' or 'cpu'")
    return name


def make_backend(name: str, profile: GpuProfile | None, budget: int | None = None) -> Backend:
    """A fresh backend for one test. ``budget`` (bytes, context included; see :mod:`.budget`)
    is where it runs out of memory."""
    if name == "cuda":
        return CudaBackend(profile, budget)
    if name == "sim":
        from .sim.backend import SimBackend

        return SimBackend(profile, budget=budget)
    return CpuBackend(profile, budget)
