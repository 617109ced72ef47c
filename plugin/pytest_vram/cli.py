"""The ``pytest-vram`` command: work with saved memory histories.

    pytest-vram table HISTORY [--breakdown] [--format text|markdown|csv]

Exit codes: 0 success, 1 a --fail expression tripped, 2 bad input (one clear message).
"""
from __future__ import annotations

import argparse
import csv
import io
import sys

from . import report
from .history import HistoryError, load
from .tracker import CATEGORIES

FORMATS = ("text", "markdown", "csv")


def _table(args) -> int:
    history = load(args.history)
    if args.format == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(list(report.HEADERS) + (list(CATEGORIES) if args.breakdown else []))
        writer.writerows(report.row(r, args.breakdown) for r in history.records)
        print(out.getvalue(), end="")
    else:
        print(report.table(history.records, args.breakdown, markdown=args.format == "markdown"))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pytest-vram", description="GPU memory histories of pytest-vram")
    sub = p.add_subparsers(dest="command", required=True)
    table = sub.add_parser("table", help="the memory table of one history")
    table.add_argument("history", help="a --vram-json file or a pytest-benchmark JSON")
    table.add_argument("--breakdown", action="store_true", help="add the step's breakdown columns")
    table.add_argument("--format", choices=FORMATS, default="text")
    table.set_defaults(run=_table)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except HistoryError as exc:
        print(f"pytest-vram: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
