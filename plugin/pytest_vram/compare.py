"""Comparing memory records between runs, and the regression expressions that gate CI.

An expression is ``PHASE.FIELD:LIMIT``: PHASE a phase name or ``*`` (every phase), FIELD one
of allocated, peak, reserved, context, total or a breakdown category, LIMIT a percentage
(``5%``) or a size with its unit (``256MiB``). A case regresses when the new value exceeds the
old by more than the limit, or when it fitted before and does not now.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from .sizes import format_bytes, parse_size
from .schema import CATEGORIES

FIELDS = ("allocated", "peak", "reserved", "context", "total") + CATEGORIES
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


def parse_fail_expr(text: str) -> FailExpr:
    match = _EXPR.match(text.strip())
    if not match:
        raise ValueError(f"malformed regression expression {text!r}: expected PHASE.FIELD:LIMIT "
                         "such as 'step.peak:5%' or 'creation.allocated:256MiB'")
    phase, field, limit = match.group("phase", "field", "limit")
    if field not in FIELDS:
        raise ValueError(f"unknown field {field!r} in {text!r}; valid choices: {', '.join(FIELDS)}")
    if limit.endswith("%"):
        try:
            return FailExpr(phase, field, float(limit[:-1]), None, text)
        except ValueError:
            raise ValueError(f"malformed percentage {limit!r} in {text!r}") from None
    return FailExpr(phase, field, None, parse_size(limit), text)


def value(record: dict, phase: str, field: str) -> int | None:
    data = record.get("phases", {}).get(phase)
    if data is None:
        return None
    return data.get("breakdown", {}).get(field) if field in CATEGORIES else data.get(field)


@dataclass
class Delta:
    case: str
    metric: str
    old: int
    new: int

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

    def notes(self, old_name: str, new_name: str) -> list[str]:
        """Warnings, one-sided cases and status changes, one line each."""
        return ([f"warning: {w}" for w in self.warnings]
                + [f"case only in {old_name}: {c}" for c in self.only_old]
                + [f"case only in {new_name}: {c}" for c in self.only_new]
                + [f"status: {c}: {a} -> {b}" for c, a, b in self.status_changes])

    def regressions(self, exprs: list[FailExpr]) -> list[str]:
        found = [f"{case}: was {old}, now {new}" for case, old, new in self.status_changes
                 if old == "fits" and new != "fits"]
        for d in self.deltas:
            phase, field = d.metric.split(".", 1)
            for e in exprs:
                if e.phase in ("*", phase) and e.field == field and e.exceeded(d.old, d.new):
                    found.append(f"{d.case}: {d.metric} grew {_change(d)} past {e.text}")
        return found


def _change(d: Delta) -> str:
    pct = f" ({d.percent:+.1f}%)" if d.percent is not None else ""
    return f"from {format_bytes(d.old)} to {format_bytes(d.new)}, {d.change:+d} bytes{pct}"


def compare(old_records: list[dict], new_records: list[dict], old_machine: dict | None = None,
            new_machine: dict | None = None) -> Comparison:
    old = {r["case"]: r for r in old_records}
    new = {r["case"]: r for r in new_records}
    deltas, changes = [], []
    for case in [c for c in new if c in old]:
        a, b = old[case], new[case]
        if a.get("status") != b.get("status"):
            changes.append((case, a.get("status"), b.get("status")))
        for phase in [p for p in b.get("phases", {}) if p in a.get("phases", {})]:
            for field in FIELDS:
                x, y = value(a, phase, field), value(b, phase, field)
                if isinstance(x, int) and isinstance(y, int):
                    deltas.append(Delta(case, f"{phase}.{field}", x, y))
    return Comparison(deltas, [c for c in old if c not in new], [c for c in new if c not in old],
                      changes, machine_warnings(old_machine or {}, new_machine or {}))


def machine_warnings(old: dict, new: dict) -> list[str]:
    """Comparing across GPUs, backends or library versions is apples and oranges: say so."""
    out = []
    for key in ("backend", "gpu_name", "gpu_profile"):
        if old.get(key) != new.get(key):
            out.append(f"{key} differs: {old.get(key)!r} vs {new.get(key)!r}")
    libs_old, libs_new = old.get("libraries", {}), new.get("libraries", {})
    for lib in sorted(set(libs_old) | set(libs_new)):
        if libs_old.get(lib) != libs_new.get(lib):
            out.append(f"{lib} version differs: {libs_old.get(lib)} vs {libs_new.get(lib)}")
    return out


def delta_rows(comparison: Comparison, metrics: tuple[str, ...] = ("creation.allocated", "step.peak", "step.total"),
               changed_only: bool = False) -> list[list[str]]:
    rows = []
    for d in comparison.deltas:
        if d.metric in metrics and (d.change or not changed_only):
            pct = f"{d.percent:+.2f}%" if d.percent is not None else "-"
            rows.append([d.case, d.metric, format_bytes(d.old), format_bytes(d.new), f"{d.change:+,}", pct])
    return rows


DELTA_HEADERS = ["case", "metric", "old", "new", "change (bytes)", "change"]
