"""Charts of memory histories (matplotlib, written to PNG).

One history: per case, "after creation" beside the step's peak, the step stacked by
breakdown category plus what the allocator and context add, the budget as a line.
Several: a trend per case of the step's total across the histories, in the given order.
"""
from __future__ import annotations

from .history import History
from .report import first_last
from .sizes import UNITS
from .schema import CATEGORIES

GiB = UNITS["GiB"]


def _step(record: dict) -> dict:
    return first_last(record)[1]


def plot(histories: list[History], out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(histories[0].records)), 5))
    if len(histories) == 1:
        _bars(ax, histories[0].records)
    else:
        _trend(ax, histories)
    ax.set_ylabel("GiB (2^30 bytes)")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def _bars(ax, records: list[dict]) -> None:
    xs = range(len(records))
    created = [first_last(r)[0]["allocated"] / GiB for r in records]
    ax.bar([x - 0.2 for x in xs], created, width=0.4, label="after creation", color="0.6")
    bottom = [0.0] * len(records)
    for category in CATEGORIES:
        heights = [_step(r).get("breakdown", {}).get(category, 0) / GiB for r in records]
        ax.bar([x + 0.2 for x in xs], heights, width=0.4, bottom=bottom, label=f"step: {category}")
        bottom = [b + h for b, h in zip(bottom, heights)]
    overhead = [max(0.0, _step(r)["total"] / GiB - b) for r, b in zip(records, bottom)]
    ax.bar([x + 0.2 for x in xs], overhead, width=0.4, bottom=bottom, label="step: allocator + context",
           color="none", edgecolor="k", hatch="//")
    budgets = {r.get("budget_bytes") for r in records if r.get("budget_bytes")}
    for budget in budgets:
        ax.axhline(budget / GiB, color="r", linestyle="--", label=f"budget {budget / GiB:.2f} GiB")
    ax.set_xticks(list(xs), [r["case"] + (" (OOM)" if r.get("oom_phase") else "") for r in records],
                  rotation=30, ha="right", fontsize="small")


def _trend(ax, histories: list[History]) -> None:
    by_case = [h.by_case() for h in histories]
    cases = list(dict.fromkeys(case for cases in by_case for case in cases))
    for case in cases:
        ys = [_step(cases[case])["total"] / GiB if case in cases else None for cases in by_case]
        ax.plot(range(len(histories)), ys, marker="o", label=case)
    ax.set_xticks(range(len(histories)), [h.path for h in histories], rotation=30, ha="right", fontsize="small")
    ax.set_title("peak in step (reserved + context) per history")
