"""``--vram-shard=I/N``: split the selected tests across N CI jobs, deterministically.

Shard I (1-based) keeps the tests at positions I-1, I-1+N, ... of the selection in collection
order (after ``-m``/``-k``), so the shards are disjoint, cover the selection, and differ in
size by at most one. Every shard must be run with the same selection; ``pytest-vram merge``
joins their ``--vram-json`` files back into the serial run's order.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


@dataclass(frozen=True)
class Shard:
    index: int  # 1-based
    count: int

    def select(self, items: list) -> tuple[list, list]:
        """(kept, deselected) in their original order."""
        kept = [item for i, item in enumerate(items) if i % self.count == self.index - 1]
        dropped = [item for i, item in enumerate(items) if i % self.count != self.index - 1]
        return kept, dropped

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str) -> Shard:
    """'2/4' -> Shard(2, 4). Raises ValueError naming the bad value and the valid form."""
    match = _SHARD.match(str(text))
    if match:
        index, count = int(match.group(1)), int(match.group(2))
        if 1 <= index <= count:
            return Shard(index, count)
    raise ValueError(f"--vram-shard: malformed shard {text!r}: expected I/N with 1 <= I <= N, "
                     "such as 1/4 (shard 1 of 4)")
