"""The memory table, in the seed study's shape: case, after creation, peak in step, % of
budget, trainable parameters, status; optionally the peak step's breakdown.

"after creation" is the memory allocated at the end of the first phase; "peak in step" is
what the last phase needed of the device: peak reserved (peak allocated where the backend has
no caching allocator) plus the CUDA context. Sizes are shown in GiB, with the unit.
"""
from __future__ import annotations

from .sizes import format_bytes
from .schema import CATEGORIES

HEADERS = ("case", "after creation", "peak in step", "% of budget", "trainable params", "status")


def first_last(record: dict) -> tuple[dict | None, dict | None]:
    phases = list(record.get("phases", {}).values())
    if not phases:
        return None, None
    return phases[0], phases[-1]


def row(record: dict, breakdown: bool = False) -> list[str]:
    first, last = first_last(record)
    created = "OOM" if first and first["oom"] else format_bytes(first and first["allocated"])
    if len(record.get("phases", {})) < 2:
        stepped = "-"
    else:
        stepped = "OOM" if last["oom"] else format_bytes(last["total"])
    budget = record.get("budget_bytes")
    share = f"{100 * record['peak_total_bytes'] / budget:.1f}%" if budget else "-"
    params = record.get("trainable_params")
    cells = [record["case"], created, stepped, share,
             f"{params:,}" if params is not None else "-", record["status"]]
    if breakdown:
        parts = (last or {}).get("breakdown", {})
        cells += [format_bytes(parts.get(c), digits=2) if parts else "-" for c in CATEGORIES]
    return cells


def table(records: list[dict], breakdown: bool = False, markdown: bool = False) -> str:
    headers = list(HEADERS) + (list(CATEGORIES) if breakdown else [])
    rows = [row(r, breakdown) for r in records]
    return render(headers, rows, markdown)


def render(headers: list[str], rows: list[list[str]], markdown: bool = False) -> str:
    if markdown:
        lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        lines += ["| " + " | ".join(cells) + " |" for cells in rows]
        return "\n".join(lines)
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows)]
    fmt = lambda cells: "  ".join(  # noqa: E731
        str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([fmt(headers), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])
