"""Comparing memory records between runs, and the regression expressions that gate CI.

An expression is ``PHASE.FIELD:LIMIT``: PHASE a phase name or ``*`` (every phase), FIELD one
of allocated, peak, reserved, context, total or a breakdown category, LIMIT a positive
percentage (``5%``) or a positive size with its unit (``256MiB``). A case regresses when the
new value exceeds the old by more than the limit, or when it fitted before and does not now.

A gate must not be disabled by a typo: a limit that can never trip (NaN, inf) or always trips
(zero, negative), an unknown field, a phase no history has, or an expression that matched no
case is an error or a regression, never a silent pass.

A phase that ran out of memory in either history is not compared: its numbers are what it
reached before the failed allocation, and a case that now runs out of memory earlier would
read as an improvement. Its status change (fits -> OOM) is the regression. Where it ran out in
both and those numbers moved, a note says so (``oom_moves``), so that "no memory changes" is
never said of two runs that differ: the simulator changed, or the run failed elsewhere.

Cases are matched by identity (the node id, :func:`schema.identity`), not by display name:
``test_forward[1]`` and ``test_backward[1]`` are two cases even though both are called "1".
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from .schema import CATEGORIES, SIZE_FIELDS, Record, display_names, identity
from .sizes import format_bytes, parse_size

METRICS = SIZE_FIELDS + CATEGORIES  # what an expression's FIELD may name
_EXPR = re.compile(r"^(?P<phase>[\w*-]+)\.(?P<field>\w+):(?P<limit>.+)$")


@dataclass(frozen=True)
class FailExpr:
    phase: str
    field: str
    percent: float | None
    size: int | None
    text: str

    def exceeded(self, old: int, new: int) -> bool:
        if self.percent is not None:
            return new > old * (1 + self.percent / 100)
        return new - old > self.size

    def matches(self, phase: str, field: str) -> bool:
        return self.phase in ("*", phase) and self.field == field


def parse_fail_expr(text: str) -> FailExpr:
    """The expression, or ValueError naming it and the valid choices. The phase is checked
    against the histories later (:func:`check_phases`): only they know their phases."""
    match = _EXPR.match(text.strip())
    if not match:
        raise ValueError(f"malformed regression expression {text!r}: expected PHASE.FIELD:LIMIT "
                         "such as 'step.peak:5%' or 'creation.allocated:256MiB'")
    phase, field, limit = match.group("phase", "field", "limit")
    if field not in METRICS:
        raise ValueError(f"unknown field {field!r} in {text!r}; valid choices: {', '.join(METRICS)}")
    if limit.endswith("%"):
        try:
            percent = float(limit[:-1])
        except ValueError:
            raise ValueError(f"malformed percentage {limit!r} in {text!r}: expected a number such as 5%") from None
        if not math.isfinite(percent):
            raise ValueError(f"limit {limit!r} in {text!r} can never trip: a percentage must be a "
                             "finite number above 0, such as 5%")
        if percent <= 0:
            raise ValueError(f"limit {limit!r} in {text!r} always trips (an unchanged run would "
                             "regress): a percentage must be above 0, such as 5%")
        return FailExpr(phase, field, percent, None, text)
    try:
        size = parse_size(limit)
    except ValueError as exc:
        raise ValueError(f"limit in {text!r}: {exc}") from None
    if size <= 0:
        raise ValueError(f"limit {limit!r} in {text!r} always trips (an unchanged run would regress): "
                         "a size limit must be above 0 bytes, such as 256MiB")
    return FailExpr(phase, field, None, size, text)


def phases_of(*record_lists: list[Record]) -> list[str]:
    """Every phase name in these records, in order of first appearance."""
    return list(dict.fromkeys(p for records in record_lists for r in records for p in r["phases"]))


def check_phases(exprs: list[FailExpr], phases: list[str]) -> None:
    """ValueError for an expression whose phase is neither ``*`` nor one of ``phases``."""
    for e in exprs:
        if e.phase != "*" and e.phase not in phases:
            raise ValueError(f"phase {e.phase!r} in {e.text!r}: phases in these histories: "
                             f"{', '.join(phases) or '(none)'} (or * for every phase)")


def value(record: Record, phase: str, field: str) -> int | None:
    data = record["phases"].get(phase)
    if data is None:
        return None
    return data["breakdown"].get(field) if field in CATEGORIES else data.get(field)


@dataclass
class Delta:
    case: str   # display name
    metric: str
    old: int
    new: int
    test: str = ""  # identity

    @property
    def change(self) -> int:
        return self.new - self.old

    @property
    def percent(self) -> float | None:
        return 100 * self.change / self.old if self.old else None


@dataclass
class Comparison:
    deltas: list[Delta]
    only_old: list[str]
    only_new: list[str]
    status_changes: list[tuple[str, str, str]]  # case, old status, new status
    warnings: list[str]
    oom_moves: list[Delta] = field(default_factory=list)  # moved in a phase out of memory in both

    def notes(self, old_name: str, new_name: str) -> list[str]:
        """Warnings, one-sided cases, status changes and moves where both ran out of memory,
        one line each."""
        return ([f"warning: {w}" for w in self.warnings]
                + [f"case only in {old_name}: {c}" for c in self.only_old]
                + [f"case only in {new_name}: {c}" for c in self.only_new]
                + [f"status: {c}: {a} -> {b}" for c, a, b in self.status_changes]
                + [f"out of memory in both, not compared: {d.case}: {d.metric} at the failure "
                   f"{_change(d)}" for d in self.oom_moves])

    def regressions(self, exprs: list[FailExpr]) -> list[str]:
        """One line per regression. An expression that matched no value in both histories is
        one too: it checked nothing, and a gate that checks nothing must not pass."""
        found = [f"{case}: was {old}, now {new}" for case, old, new in self.status_changes
                 if old == "fits" and new != "fits"]
        for e in exprs:
            matched = [d for d in self.deltas if e.matches(*d.metric.split(".", 1))]
            if not matched:
                found.append(f"{e.text} matched no case: no case has {e.phase}.{e.field} in both "
                             "histories, so it checked nothing")
            found += [f"{d.case}: {d.metric} grew {_change(d)} past {e.text}"
                      for d in matched if e.exceeded(d.old, d.new)]
        return found


def _change(d: Delta) -> str:
    pct = f" ({d.percent:+.1f}%)" if d.percent is not None else ""
    return f"from {format_bytes(d.old)} to {format_bytes(d.new)}, {d.change:+d} bytes{pct}"


def compare(old_records: list[Record], new_records: list[Record], old_machine: dict | None = None,
            new_machine: dict | None = None) -> Comparison:
    key, warnings = _matching(old_records, new_records)
    old = _keyed(old_records, key, "the old history", warnings)
    new = _keyed(new_records, key, "the new history", warnings)
    shown = display_names([*old.values(), *new.values()])
    names = {k: shown[identity(r)] if k == identity(r) else k for side in (old, new) for k, r in side.items()}
    deltas, changes, oom_moves = [], [], []
    for k in [k for k in new if k in old]:
        a, b = old[k], new[k]
        if a["status"] != b["status"]:
            changes.append((names[k], a["status"], b["status"]))
        for phase in [p for p in b["phases"] if p in a["phases"]]:
            both_oom = a["phases"][phase]["oom"] and b["phases"][phase]["oom"]
            if not both_oom and (a["phases"][phase]["oom"] or b["phases"][phase]["oom"]):
                continue  # what it reached before failing: no measure (the status says OOM)
            for metric in (SHOWN_FIELDS if both_oom else METRICS):
                x, y = value(a, phase, metric), value(b, phase, metric)
                if isinstance(x, int) and isinstance(y, int):
                    d = Delta(names[k], f"{phase}.{metric}", x, y, k)
                    if not both_oom:
                        deltas.append(d)
                    elif d.change:
                        oom_moves.append(d)
    return Comparison(deltas, [names[k] for k in old if k not in new], [names[k] for k in new if k not in old],
                      changes, machine_warnings(old_machine or {}, new_machine or {}) + warnings, oom_moves)


def _matching(old: list[Record], new: list[Record]):
    """Match by node id; by display name where a history predates node ids in records (said,
    when the other history has them)."""
    with_ids = [all("test" in r for r in side) for side in (old, new)]
    if all(with_ids):
        return (lambda r: r["test"]), []
    mixed = any(with_ids) or any("test" in r for r in [*old, *new])
    return (lambda r: r["case"]), ["a history without node ids ('test', written by an older pytest-vram): "
                                   "cases matched by display name"] if mixed else []


def _keyed(records: list[Record], key, side: str, warnings: list[str]) -> dict[str, Record]:
    out = {}
    for r in records:
        if key(r) in out:
            warnings.append(f"{key(r)!r} is twice in {side}: the later record is compared")
        out[key(r)] = r
    return out


def machine_warnings(old: dict, new: dict) -> list[str]:
    """Comparing across GPUs, backends or library versions is apples and oranges: say so."""
    out = []
    for key in ("backend", "gpu_name", "gpu_profile"):
        if old.get(key) != new.get(key):
            out.append(f"{key} differs: {old.get(key)!r} vs {new.get(key)!r}")
    libs_old, libs_new = old.get("libraries", {}), new.get("libraries", {})
    libs_old, libs_new = (x if isinstance(x, dict) else {} for x in (libs_old, libs_new))
    for lib in sorted(set(libs_old) | set(libs_new)):
        if libs_old.get(lib) != libs_new.get(lib):
            out.append(f"{lib} version differs: {libs_old.get(lib)} vs {libs_new.get(lib)}")
    return out


SHOWN_FIELDS = ("allocated", "peak", "total")  # per phase, in the delta table


def delta_rows(comparison: Comparison, fields: tuple[str, ...] = SHOWN_FIELDS,
               changed_only: bool = True) -> list[list[str]]:
    """The delta table: every phase's ``fields`` (by default only those that changed)."""
    rows = []
    for d in comparison.deltas:
        if d.metric.split(".", 1)[1] in fields and (d.change or not changed_only):
            pct = f"{d.percent:+.2f}%" if d.percent is not None else "-"
            rows.append([d.case, d.metric, format_bytes(d.old), format_bytes(d.new), f"{d.change:+,}", pct])
    return rows


DELTA_HEADERS = ["case", "metric", "old", "new", "change (bytes)", "change"]


def no_changes_line(comparison: Comparison) -> str:
    """What stands in for an empty delta table."""
    if comparison.oom_moves:
        return ("no memory changes where both runs fit; where both ran out of memory the figures "
                "moved (the notes above)")
    return "no memory changes"
