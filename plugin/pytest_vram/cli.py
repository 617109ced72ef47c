"""The ``pytest-vram`` command: work with saved memory histories.

    pytest-vram table HISTORY [--breakdown] [--format text|markdown|csv]
    pytest-vram compare OLD NEW [NEW ...] [--format ...] [--fail PHASE.FIELD:LIMIT ...]
    pytest-vram plot HISTORY [HISTORY ...] -o OUT.png
    pytest-vram merge SHARD [SHARD ...] -o OUT.json

Exit codes: 0 success, 1 a --fail expression tripped, 2 bad input (one clear message).
"""
from __future__ import annotations

import argparse
import csv
import io
import sys

from . import report
from .compare import DELTA_HEADERS, compare, delta_rows, parse_fail_expr
from .options import OPTIONS
from .history import load, write_json_atomic
from .schema import CATEGORIES

FORMATS = ("text", "markdown", "csv")


def _emit(headers: list[str], rows: list[list[str]], fmt: str) -> None:
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(headers)
        writer.writerows(rows)
        print(out.getvalue(), end="")
    else:
        print(report.render(headers, rows, markdown=fmt == "markdown"))


def _table(args) -> int:
    history = load(args.history)
    headers = list(report.HEADERS) + (list(CATEGORIES) if args.breakdown else [])
    _emit(headers, [report.row(r, args.breakdown) for r in history.records], args.format)
    return 0


def _compare(args) -> int:
    exprs = [parse_fail_expr(e) for e in args.fail or []]
    old = load(args.old)
    regressions = []
    for path in args.new:
        new = load(path)
        result = compare(old.records, new.records, old.machine_info, new.machine_info)
        print(f"{old.path} -> {new.path}")
        for line in result.notes(old.path, new.path):
            print(line)
        _emit(DELTA_HEADERS, delta_rows(result), args.format)
        regressions += result.regressions(exprs)
    for line in regressions:
        print(f"REGRESSION {line}")
    return 1 if regressions else 0


def _plot(args) -> int:
    from .plot import plot

    plot([load(p) for p in args.histories], args.output)
    print(f"wrote {args.output}")
    return 0


def _merge(args) -> int:
    from .merge import merge

    doc, notes = merge(args.shards)
    for line in notes:
        print(line, file=sys.stderr)
    write_json_atomic(args.output, doc)
    print(f"wrote {args.output}: {len(doc['records'])} records from {len(args.shards)} files")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pytest-vram", description="GPU memory histories of pytest-vram")
    sub = p.add_subparsers(dest="command", required=True)
    table = sub.add_parser("table", help="the memory table of one history")
    table.add_argument("history", help="a --vram-json file or a pytest-benchmark JSON")
    table.add_argument("--breakdown", action="store_true", help="add the step's breakdown columns")
    table.add_argument("--format", choices=FORMATS, default="text")
    table.set_defaults(run=_table)
    comp = sub.add_parser("compare", help="per-case memory deltas between histories")
    comp.add_argument("old", help="the reference history")
    comp.add_argument("new", nargs="+", help="histories to compare with it")
    comp.add_argument("--format", choices=FORMATS, default="text")
    fail = next(o for o in OPTIONS if o.flag == "--vram-compare-fail")
    comp.add_argument("--fail", action="append", help=fail.argparse_help)
    comp.set_defaults(run=_compare)
    chart = sub.add_parser("plot", help="PNG chart: one history's cases, or a trend across histories")
    chart.add_argument("histories", nargs="+")
    chart.add_argument("-o", "--output", required=True, help="PNG file to write")
    chart.set_defaults(run=_plot)
    join = sub.add_parser("merge", help="join shards' histories (--vram-shard) into one --vram-json file")
    join.add_argument("shards", nargs="+", help="--vram-json files (or pytest-benchmark JSONs) of disjoint cases")
    join.add_argument("-o", "--output", required=True, help="the merged --vram-json file to write")
    join.set_defaults(run=_merge)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except ValueError as exc:  # HistoryError included
        print(f"pytest-vram: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
