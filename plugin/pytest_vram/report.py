"""The memory table: one row per case, whose numbers add up.

Columns: the case; what the first phase left allocated ("after creation"); the case's largest
phase (by ``total``, or the phase that ran out of memory) and its peak: peak reserved (peak
allocated where the backend has no caching allocator) plus the CUDA context, what the device
had to hold; the budget it was held to (with the GPU profile's name when the budget is that
card's memory); that peak as a share of the budget; trainable parameters; the status, with
a leak flagged when the test started with memory an earlier test left behind.

With ``breakdown=True`` the largest phase's peak is split into the breakdown categories
(which sum to its peak *allocated*) plus "allocator cache + context" (its total less that sum),
so the parts sum to the peak column they explain. Sizes are shown in GiB, with the unit.
"""
from __future__ import annotations

from .profiles import PROFILES
from .schema import CATEGORIES, Phase, Record, display_names, identity, validate_record
from .sizes import format_bytes

HEADERS = ("case", "after creation", "largest phase", "peak (reserved + context)", "budget",
           "% of budget", "trainable params", "status")
CACHE_AND_CONTEXT = "allocator cache + context"
BREAKDOWN_HEADERS = (*CATEGORIES, CACHE_AND_CONTEXT)


BREAKDOWN_NOTE = ("breakdown: the largest phase's peak (reserved + context) in parts: its peak allocated "
                 f"by category, plus the {CACHE_AND_CONTEXT}; the parts sum to the peak column")


def headers(breakdown: bool = False) -> list[str]:
    return list(HEADERS) + (list(BREAKDOWN_HEADERS) if breakdown else [])


def largest_phase(record: Record) -> tuple[str, Phase] | tuple[None, None]:
    """The phase that ran out of memory, else the one with the largest total."""
    phases = record["phases"]
    if not phases:
        return None, None
    if record.get("oom_phase") in phases:
        return record["oom_phase"], phases[record["oom_phase"]]
    name = max(phases, key=lambda p: phases[p]["total"])
    return name, phases[name]


def budget_cell(record: Record) -> str:
    budget = record.get("budget_bytes")
    if budget is None:
        return "-"
    profile = PROFILES.get(record.get("gpu") or "")
    name = f" ({profile.name})" if profile and profile.total_bytes == budget else ""
    return f"{format_bytes(budget)}{name}"


def status_cell(record: Record) -> str:
    held = record.get("baseline_bytes")
    return record["status"] + (f", LEAK: {format_bytes(held)} held at start" if held else "")


def row(record: Record, breakdown: bool = False, name: str | None = None) -> list[str]:
    """The record's cells; ``name``: its display name among the others (:func:`rows`)."""
    phases = list(record["phases"].values())
    first = phases[0] if phases else None
    created = "OOM" if first and first["oom"] else format_bytes(first and first["allocated"])
    largest, phase = largest_phase(record)
    peak = "-" if phase is None else ("OOM" if phase["oom"] else format_bytes(phase["total"]))
    budget = record.get("budget_bytes")
    share = f"{100 * phase['total'] / budget:.1f}%" if budget and phase else "-"
    params = record.get("trainable_params")
    cells = [name or record["case"], created, largest or "-", peak, budget_cell(record), share,
             f"{params:,}" if params is not None else "-", status_cell(record)]
    if breakdown:
        cells += breakdown_cells(phase)
    return cells


def breakdown_cells(phase: Phase | None) -> list[str]:
    if not phase or not phase["breakdown"]:
        return ["-"] * len(BREAKDOWN_HEADERS)
    parts = [phase["breakdown"].get(c, 0) for c in CATEGORIES]
    return [format_bytes(p, digits=2) for p in parts] + [format_bytes(phase["total"] - sum(parts), digits=2)]


def table(records: list[Record], breakdown: bool = False, markdown: bool = False) -> str:
    """The table of ``records``; a record that lacks a key the table needs is a ValueError
    naming it (records from a file are checked on load; this covers records built in code)."""
    for i, rec in enumerate(records):
        name = rec.get("case", "?") if isinstance(rec, dict) else repr(rec)
        validate_record(rec, f"record {i} ({name})")
    note = [BREAKDOWN_NOTE, ""] if breakdown else []
    return "\n".join(note + [render(headers(breakdown), rows(records, breakdown), markdown)])


def rows(records: list[Record], breakdown: bool = False) -> list[list[str]]:
    """One row per record; two tests sharing a display name show enough of their node ids to
    be told apart (``test_forward[1]``, ``test_backward[1]``)."""
    names = display_names(records)
    return [row(r, breakdown, names[identity(r)]) for r in records]


def render(headers: list[str], rows: list[list[str]], markdown: bool = False) -> str:
    if markdown:
        return markdown_table(headers, rows)
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows)]
    fmt = lambda cells: "  ".join(  # noqa: E731
        str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([fmt(headers), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    """A GitHub-flavoured Markdown table, to paste as it is into a CI job summary or a PR
    comment: '|' in a cell escaped, line breaks flattened, numbers right-aligned."""
    def cell(text) -> str:
        return " ".join(str(text).split()).replace("|", "\\|")

    align = ["---" if i == 0 else "---:" for i in range(len(headers))]
    lines = ["| " + " | ".join(cell(h) for h in headers) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(cell(c) for c in cells) + " |" for cells in rows]
    return "\n".join(lines)
