"""The ``pytest-vram`` command: work with saved memory histories.

    pytest-vram table HISTORY [--breakdown] [--format text|markdown|csv]
    pytest-vram compare OLD NEW [NEW ...] [--format ...] [--fail PHASE.FIELD:LIMIT ...]
    pytest-vram plot HISTORY [HISTORY ...] -o OUT.png
    pytest-vram merge SHARD [SHARD ...] -o OUT.json
    pytest-vram COMMAND ...   (a project's own: the ``pytest_vram.commands`` entry points)

A project adds a subcommand with an entry point in the group ``pytest_vram.commands``
(``fit = "fixtures.fit:command"``): a callable taking the arguments after the command's name and
returning the exit code. It is loaded only when named, so these history commands stay torch-free
and the plugin knows no model; one that cannot be imported is one line saying how to get it.

Exit codes: 0 success, 1 a --fail expression tripped (or matched no case), 2 bad input (one
clear message). The history side imports no torch (tests/test_cli_no_torch.py): these commands
run on a CI box that only has the JSON files.
"""
from __future__ import annotations

import argparse
import csv
import io
import os
import sys

from . import report
from .compare import (DELTA_HEADERS, check_phases, compare, delta_rows, no_changes_line, parse_fail_expr,
                      phases_of)
from .history import load, write_json_atomic
from .options import OPTIONS

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


def _say(lines: list[str], fmt: str) -> None:
    """Notes and warnings: as a Markdown list (one item each, not one run-on paragraph)."""
    for line in lines:
        print(f"- {line}" if fmt == "markdown" else line)
    if lines and fmt == "markdown":
        print()


def _table(args) -> int:
    history = load(args.history)
    if args.format == "markdown":
        print(f"### GPU memory: `{history.path}` ({len(history.records)} cases)\n")
    _say([w for w in [history.incomplete_warning()] if w], args.format)
    if args.breakdown and args.format != "csv":
        print(report.BREAKDOWN_NOTE + "\n")
    _emit(report.headers(args.breakdown), report.rows(history.records, args.breakdown), args.format)
    return 0


def _compare(args) -> int:
    exprs = [parse_fail_expr(e) for e in args.fail or []]
    old = load(args.old)
    news = [load(path) for path in args.new]
    check_phases(exprs, phases_of(old.records, *(n.records for n in news)))
    regressions = []
    for new in news:
        result = compare(old.records, new.records, old.machine_info, new.machine_info)
        heading = f"{old.path} -> {new.path}"
        print(f"### `{old.path}` -> `{new.path}`\n" if args.format == "markdown" else heading)
        warnings = [w for w in (old.incomplete_warning(), new.incomplete_warning()) if w]
        _say(warnings + result.notes(old.path, new.path), args.format)
        rows = delta_rows(result)
        if rows or args.format == "csv":
            _emit(DELTA_HEADERS, rows, args.format)
        else:
            print(no_changes_line(result))
        if args.format == "markdown":
            print()  # the table ends before the next heading
        regressions += result.regressions(exprs)
    _say([f"REGRESSION {line}" for line in regressions], args.format)
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


COMMANDS_GROUP = "pytest_vram.commands"


def project_commands() -> dict:
    """name -> entry point, of every installed ``pytest_vram.commands`` entry point."""
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=COMMANDS_GROUP)}


def _run_project_command(args) -> int:
    ep = args.entry_point
    # a project's command may live in its checkout rather than in an installed package (the suite's
    # ``fixtures.fit``): resolve it against the current directory too, as ``python -m`` would, after
    # everything installed (a console script's sys.path starts at its bin/ folder, not at the cwd)
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    try:
        command = ep.load()
    except ImportError as exc:
        module = ep.value.split(":")[0]
        print(f"pytest-vram: error: the {ep.name!r} command comes from {module} ({ep.value}), which cannot be "
              f"imported ({exc}); run it from the pytest-vram repository root with the suite's libraries "
              "installed: pip install -e '.[suite]'", file=sys.stderr)
        return 2
    return command(args.rest)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pytest-vram", description="GPU memory histories of pytest-vram")
    sub = p.add_subparsers(dest="command", required=True)
    table = sub.add_parser("table", help="the memory table of one history")
    table.add_argument("history", help="a --vram-json file or a pytest-benchmark JSON")
    table.add_argument("--breakdown", action="store_true",
                       help="split each case's peak into its breakdown and the allocator cache + context")
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
    for name, ep in sorted(project_commands().items()):
        if name in sub.choices:
            continue  # the plugin's own commands keep their names
        # no prefix characters: every argument after the name, --help included, is the command's own
        extra = sub.add_parser(name, help=f"{ep.value} (run 'pytest-vram {name} --help')", add_help=False,
                               prefix_chars="\0")
        extra.add_argument("rest", nargs=argparse.REMAINDER)
        extra.set_defaults(run=_run_project_command, entry_point=ep)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except ValueError as exc:  # HistoryError included
        print(f"pytest-vram: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # an output that cannot be written
        print(f"pytest-vram: error: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
