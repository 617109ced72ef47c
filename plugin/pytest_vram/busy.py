"""``--vram-busy``: at start, the cuda backend asks NVML how much of the GPU other processes
hold; above ``--vram-busy-limit`` it warns (``warn``) or refuses to run (``refuse``): cases
could run out of memory early, and totals would not be what a free card shows."""
from __future__ import annotations

import pytest

from . import nvml
from .sizes import format_bytes


class VramWarning(UserWarning):
    """A measurement that may be wrong, for a reason outside the test (a busy GPU)."""


def busy_problem(foreign_bytes: int | None, limit: int) -> str | None:
    """The warning when other processes hold more than ``limit`` bytes of the GPU."""
    if foreign_bytes is None or foreign_bytes <= limit:
        return None
    return (f"the GPU already holds {format_bytes(foreign_bytes)} ({foreign_bytes} bytes) of other "
            f"processes' memory, over --vram-busy-limit={format_bytes(limit)}: cases may run out of "
            "memory early and totals are not what a free card would show")


def check_busy(config, action: str, limit: int, device: int = 0) -> None:
    """Warn, or raise ``pytest.UsageError`` for ``refuse``, when the GPU is busy."""
    if action == "ignore":
        return
    problem = busy_problem(nvml.foreign_used_bytes(device), limit)
    if problem and action == "refuse":
        raise pytest.UsageError(f"{problem} (--vram-busy=refuse)")
    if problem:
        config.issue_config_time_warning(VramWarning(problem), stacklevel=2)
