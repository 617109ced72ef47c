"""``--vram-compare`` / ``--vram-compare-fail`` inside pytest: compare this session's records
with a saved history, show regressions and improvements, fail the session on a regression.

Everything that can be checked before the first test runs is checked in ``Gate(...)`` (a
ValueError the session turns into a usage error): the expressions, the baseline file, that the
baseline is complete (an interrupted session's file would make every missing case look
removed), and that each expression's phase exists in the baseline."""
from __future__ import annotations

from . import report
from .benchmark_bridge import resolve
from .compare import (DELTA_HEADERS, Comparison, check_phases, compare, delta_rows, no_changes_line,
                      parse_fail_expr, phases_of)
from .history import HistoryError, load


class Gate:
    def __init__(self, spec: str, exprs: list[str], storage: str | None):
        self.exprs = [parse_fail_expr(e) for e in exprs]   # ValueError: one clear message
        self.path = resolve(spec, storage)
        self.history = load(self.path)
        if not self.history.complete:
            raise HistoryError(f"{self.path}: an incomplete history (\"complete\": false, written by an "
                               "interrupted session) cannot be a baseline; compare with a complete run")
        check_phases(self.exprs, phases_of(self.history.records))
        self.comparison: Comparison | None = None
        self.regressions: list[str] = []

    def run(self, records: list[dict], machine: dict) -> None:
        self.comparison = compare(self.history.records, records, self.history.machine_info, machine)
        self.regressions = self.comparison.regressions(self.exprs)

    def summary(self) -> str:
        c = self.comparison
        lines = [f"compared with {self.path}"] + c.notes(str(self.path), "this run")
        rows = delta_rows(c, changed_only=True)
        lines.append(report.render(DELTA_HEADERS, rows) if rows else no_changes_line(c))
        lines += [f"REGRESSION {r}" for r in self.regressions]
        return "\n".join(lines)
