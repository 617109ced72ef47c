"""The interface every measurement backend implements side by side (``cpu`` and ``cuda`` in
:mod:`.backends`, ``sim`` in :mod:`.sim.backend`); :func:`.backends.make_backend` builds one
per test as ``Backend(profile, budget=...)``.

A backend is entered for the whole test (:meth:`start` .. :meth:`stop`), so what one phase
builds is counted in the next, and marks a new peak at each phase. It applies the budget as
:mod:`.budget` says: an allocation past the budget less the CUDA context raises
``torch.OutOfMemoryError`` there.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from .meter import PhaseResult
    from .tracker import Leftovers, StorageTracker


@runtime_checkable
class Backend(Protocol):
    name: str            # "cpu", "cuda", "sim": what records say
    executes: bool       # the test body really runs (False under simulation)
    torch_device: str    # where the test puts its tensors
    tracker: "StorageTracker"  # labels storages into breakdown categories

    def start(self) -> None:
        """Begin measuring (the test starts)."""

    def stop(self) -> None:
        """Stop measuring and undo whatever :meth:`start` set (the test ended)."""

    def begin_phase(self) -> None:
        """A phase starts: its peak restarts from what is held now."""

    def end_phase(self, name: str, oom: bool) -> "PhaseResult":
        """The phase's integer bytes (``oom``: it ended in an out-of-memory error)."""

    def release(self) -> None:
        """After an OOM: let go of what the failed phase held (garbage, cached blocks)."""

    def held_bytes(self, leftovers: "Leftovers") -> int:
        """What is held on the device before the test starts (a leak from earlier tests)."""
