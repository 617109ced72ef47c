"""The budget: how much device memory a case may use, and what passing it means. The one home
of the rule; every backend applies the same enforcement.

**Which budget.** The closest ``vram_budget(SIZE)`` marker; else the closest GPU-profile
marker's total (``v100``: what the card reports to CUDA; a node-profile marker such as
``a100_80gb_x8``: one of its cards, the budget of each rank); else ``--vram-gpu``'s total; else
none. The profile (the card emulated, its CUDA context) is the closest profile marker, else
``--vram-gpu``. A budget must be a size with its unit and more than zero: ``vram_budget(12)``
would silently be 12 bytes, so a bare number is an error asking for the unit.

**What it covers.** Everything the device holds during a phase: its peak reserved memory (peak
allocated where a backend has no caching allocator) plus the CUDA context, which the allocator
cannot see. So the memory the test's tensors may reach is the budget less the context,
:func:`allocation_limit`.

**Enforcement, the same on every backend.** An allocation that would take the backend's memory
past the allocation limit raises ``torch.OutOfMemoryError`` at that allocation, as the card
would: ``sim`` in its caching-allocator model; ``cuda`` by capping the real allocator
(``torch.cuda.set_per_process_memory_fraction``) at the limit; ``cpu`` in the storage tracker,
checking each new storage (:func:`check_allocation`). The OOM is caught by the meter and the
case is recorded ``"OOM"`` at that phase on every backend.

**Verdict.** ``status``: ``"OOM"`` if a phase ran out of memory; ``"over budget"`` if a phase's
total passed the budget without an OOM (only where a backend could not enforce it, e.g. a
budget larger than the real card); else ``"fits"``. A case marked ``expect_oom`` passes only if
it did not fit; any other case passes only if it fits.
"""
from __future__ import annotations

from dataclasses import dataclass

from .profiles import NODES, GpuProfile
from .sizes import format_bytes, parse_size

FITS, OVER_BUDGET, OOM = "fits", "over budget", "OOM"
STATUSES = (FITS, OVER_BUDGET, OOM)


@dataclass(frozen=True)
class Budget:
    profile: GpuProfile | None  # the card emulated (its context), or None
    limit: int | None           # bytes the device may hold, context included; None: no budget

    @property
    def gpu(self) -> str | None:
        return self.profile.name if self.profile else None

    def text(self) -> str:
        """'15.782 GiB (v100)' when the budget is the profile's total, else the size alone."""
        if self.limit is None:
            return "none"
        named = self.profile is not None and self.profile.total_bytes == self.limit
        return f"{format_bytes(self.limit)}" + (f" ({self.profile.name})" if named else "")


def marker_limit(args: tuple, kwargs: dict) -> int:
    """The bytes of a ``vram_budget(...)`` marker. Raises ValueError naming the bad value."""
    if args:
        value = args[0]
    elif "limit" in kwargs:
        value = kwargs["limit"]
    else:
        raise ValueError("vram_budget needs a size with its unit, such as vram_budget('12GiB')")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        raise ValueError(f"vram_budget({value!r}): a number without a unit; write the size with its "
                         f"unit, such as '{value}GiB' or '{value} GB' (bytes: '{value}B')")
    try:
        limit = parse_size(value)
    except ValueError as exc:
        raise ValueError(f"vram_budget: {exc}") from None
    if limit <= 0:
        raise ValueError(f"vram_budget({value!r}): a budget must be more than zero bytes")
    return limit


def budget_for(item, default: GpuProfile | None, profiles: dict[str, GpuProfile]) -> Budget:
    """The item's budget by the rule above. Raises ValueError for a bad ``vram_budget``."""
    # a node-profile marker (a100_80gb_x8) budgets each rank as one of its cards
    cards = {**{name: node.profile for name, node in NODES.items()}, **profiles}
    profile = next((cards[m.name] for m in item.iter_markers() if m.name in cards), default)
    marker = item.get_closest_marker("vram_budget")
    if marker is not None:
        return Budget(profile, marker_limit(marker.args, marker.kwargs))
    return Budget(profile, profile.total_bytes if profile else None)


def allocation_limit(limit: int | None, context: int) -> int | None:
    """What the test's memory (reserved, or allocated without a caching allocator) may reach."""
    return None if limit is None else max(limit - context, 0)


def check_allocation(live: int, nbytes: int, allocation_cap: int | None, where: str) -> None:
    """Raise ``torch.OutOfMemoryError`` if ``nbytes`` more would pass ``allocation_cap``
    (for backends that do not have an allocator of their own to cap: cpu)."""
    if allocation_cap is not None and live + nbytes > allocation_cap:
        import torch

        raise torch.OutOfMemoryError(
            f"{where} out of memory against the budget: tried to allocate {nbytes} bytes with "
            f"{live} in use of {allocation_cap} available (the budget less the CUDA context)")


def fits(oom_phase: str | None, peak_total: int, limit: int | None) -> bool:
    return oom_phase is None and (limit is None or peak_total <= limit)


def status(oom_phase: str | None, peak_total: int, limit: int | None) -> str:
    if oom_phase is not None:
        return OOM
    return FITS if fits(oom_phase, peak_total, limit) else OVER_BUDGET


def headroom(peak_total: int, limit: int | None) -> int | None:
    """Bytes left under the budget at the largest phase (negative: over it)."""
    return None if limit is None else limit - peak_total


def verdict(case: str, budget: Budget, phases: dict, oom: str | None, expect_oom: bool) -> str | None:
    """The failure message for this case, or None when it behaved as expected. ``phases``:
    name -> PhaseResult; ``oom``: the out-of-memory message if a phase ran out."""
    if oom is not None:
        return None if expect_oom else f"{case}: {oom} (budget {budget.text()})"
    phase = max(phases.values(), key=lambda p: p.total, default=None)
    if phase is None or budget.limit is None:
        return f"{case}: marked expect_oom but no budget applies" if expect_oom else None
    over = -headroom(phase.total, budget.limit)
    if over > 0 and not expect_oom:
        return (f"{case}: phase {phase.name!r} peaked at {format_bytes(phase.total)} "
                f"({phase.total} bytes), over the budget of {budget.text()} "
                f"by {format_bytes(over)} ({over} bytes)")
    if over <= 0 and expect_oom:
        return (f"{case}: expected OOM, peaked at {format_bytes(phase.total)} of "
                f"{budget.text()} (phase {phase.name!r})")
    return None
