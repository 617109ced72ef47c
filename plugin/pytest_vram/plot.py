"""Charts of memory histories (matplotlib, written to PNG), readable at fifty cases.

One history: one horizontal bar per case, grouped by model, its largest phase's peak stacked by
breakdown category plus what the allocator cache and the CUDA context add (so the bar's length
is the table's peak column), a tick where the first phase ("after creation") ended, the budget
as a vertical line. A case that ran out of memory is drawn as OOM (a red hatched bar to the
budget, labelled), never as the small bar its partial numbers would give.
Several histories: a trend per case of the largest phase's peak across them, in the given
order; a run that ran out of memory is an OOM mark at the budget, not a point at its partial
value (an OOM at creation would otherwise read as a great improvement).
"""
from __future__ import annotations

from .history import History
from .report import CACHE_AND_CONTEXT, largest_phase
from .schema import CATEGORIES, Record, display_names, identity
from .sizes import GiB

MISSING = "pytest-vram plot needs matplotlib: pip install 'pytest-vram[plot]'"
ROW_INCHES = 0.28
# One colour per breakdown category; no red, which means OOM and the budget here.
PALETTE = ("tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:olive", "tab:brown")


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ValueError(MISSING) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def model_of(record: Record) -> str:
    """The record's model: ``params.model`` (or a parameter object's ``model``), else the
    display name's first dash-separated part."""
    params = record.get("params", {})
    for candidate in [params, *(v for v in params.values() if isinstance(v, dict))]:
        if isinstance(candidate.get("model"), str):
            return candidate["model"]
    return record["case"].split("-", 1)[0]


def plot(histories: list[History], out: str) -> None:
    plt = _pyplot()
    if len(histories) == 1:
        fig = _bars(plt, histories[0].records)
    else:
        fig = _trend(plt, histories)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)


def _bars(plt, records: list[Record]):
    names = display_names(records)
    groups: dict[str, list[Record]] = {}
    for r in records:
        groups.setdefault(model_of(r), []).append(r)
    rows: list[tuple[str, Record | None]] = []
    for model, members in groups.items():
        rows += [(f"{model}:", None)] + [(names[identity(r)], r) for r in members]
    fig, ax = plt.subplots(figsize=(11, 1.6 + ROW_INCHES * len(rows)))
    budgets = sorted({r["budget_bytes"] for r in records if r.get("budget_bytes")})
    labelled = set()

    def bar(y, left, width, label, **style):
        ax.barh(y, width, left=left, height=0.7, label=None if label in labelled else label, **style)
        labelled.add(label)

    for y, (_, r) in enumerate(rows):
        if r is None:
            continue
        name, phase = largest_phase(r)
        if phase is None:
            continue
        if phase["oom"]:
            end = r.get("budget_bytes") or phase["total"]
            bar(y, 0, end / GiB, "OOM (ran out of memory)", color="#f4cccc", edgecolor="red", hatch="xx")
            ax.text(end / GiB, y, f"  OOM in {name}", va="center", color="red", fontsize="small", weight="bold")
            continue
        left = 0.0
        for i, category in enumerate(CATEGORIES):
            width = phase["breakdown"].get(category, 0) / GiB
            if width:
                bar(y, left, width, category, color=PALETTE[i % len(PALETTE)])
            left += width
        bar(y, left, max(0.0, phase["total"] / GiB - left), CACHE_AND_CONTEXT, color="none",
            edgecolor="0.4", hatch="//")
        created = next(iter(r["phases"].values()))["allocated"] / GiB
        ax.plot([created], [y], marker="|", markersize=12, color="k", linestyle="none",
                label=None if "after" in labelled else "after the first phase (allocated)")
        labelled.add("after")
    for budget in budgets:
        ax.axvline(budget / GiB, color="red", linestyle="--", label=f"budget {budget / GiB:.2f} GiB")
    ax.set_yticks(range(len(rows)), [label for label, _ in rows], fontsize="small")
    for tick, (_, r) in zip(ax.get_yticklabels(), rows):
        if r is None:
            tick.set_fontweight("bold")
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.set_xlabel("largest phase's peak, GiB (2^30 bytes): breakdown + allocator cache + CUDA context")
    ax.grid(axis="x", alpha=0.3)
    handles = dict(zip(*reversed(ax.get_legend_handles_labels())))
    order = [*CATEGORIES, CACHE_AND_CONTEXT]
    labels = sorted(handles, key=lambda label: order.index(label) if label in order else -1)
    ax.legend([handles[label] for label in labels], labels, fontsize="small", loc="upper left",
              bbox_to_anchor=(1.01, 1))
    return fig


def _trend(plt, histories: list[History]):
    by_test = [h.by_test() for h in histories]
    every = list({identity(r): r for h in histories for r in h.records}.values())
    names = display_names(every)
    fig, ax = plt.subplots(figsize=(max(7.0, 1.3 * len(histories)) + 4, 5.5))
    budgets = sorted({r["budget_bytes"] for r in every if r.get("budget_bytes")})
    top = max([p["total"] for r in every for p in r["phases"].values()] + budgets) / GiB
    oom_labelled = False
    for key in (identity(r) for r in every):
        ys, ooms = [], []
        for x, cases in enumerate(by_test):
            phase = largest_phase(cases[key])[1] if key in cases else None
            ys.append(None if phase is None or phase["oom"] else phase["total"] / GiB)
            if phase is not None and phase["oom"]:
                ooms.append((x, (cases[key].get("budget_bytes") or 0) / GiB or top))
        line = ax.plot(range(len(histories)), ys, marker="o", label=names[key])[0]
        if ooms:  # the case's line continues, dotted, to its OOM marks
            through = list(ys)
            for x, y in ooms:
                through[x] = y
            ax.plot(range(len(histories)), through, linestyle=":", color=line.get_color())
        for x, y in ooms:
            ax.plot([x], [y], marker="X", markersize=11, color=line.get_color(), markeredgecolor="red",
                    linestyle="none", label=None if oom_labelled else "OOM (drawn at the budget)")
            ax.annotate("OOM", (x, y), textcoords="offset points", xytext=(6, 4), color="red", fontsize="small")
            oom_labelled = True
    for budget in budgets:
        ax.axhline(budget / GiB, color="red", linestyle="--", label=f"budget {budget / GiB:.2f} GiB")
    ax.set_xticks(range(len(histories)), [h.path for h in histories], rotation=30, ha="right", fontsize="small")
    ax.set_ylabel("GiB (2^30 bytes)")
    ax.set_title("largest phase's peak (reserved + context) per history")
    ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1), ncol=1 + len(every) // 30)
    return fig
