"""``--vram-isolate``: each case (each test that uses the ``vram`` fixture) runs in a fresh
process, so its peak, allocator state and CUDA context are its own.

The child is a new interpreter (``python -m pytest NODEID``: spawned, never forked after CUDA
started) with this session's vram options. It writes each of its test reports, serialized as
xdist does, to a file as they happen; the parent replays them as its own. A child that dies
(abort, segfault, a CUDA error that kills the process) leaves the reports it finished, and the
parent adds a failed report for the phase it died in, with the child's output; the session
goes on. The child runs with ``-s``, so its output (the faulthandler's traceback included)
reaches the parent; it is attached to every failed report.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

PHASES = ("setup", "call", "teardown")
OUTPUT_SECTION = "isolated process output"
# options of the parent's command line that the child needs to see the same tests and plugins
CARRIED = ("-p", "-o", "--override-ini", "-W", "--pythonwarnings", "--import-mode", "--confcutdir")


def carried_args(args: list[str]) -> list[str]:
    """The CARRIED options among ``args``, each with its value (``-p X``, ``-pX``, ``--opt=X``)."""
    out, value_next = [], False
    for arg in args:
        if value_next or any(arg == o or arg.startswith(o + "=") or (len(o) == 2 and arg.startswith(o))
                             for o in CARRIED):
            out.append(arg)
            value_next = not value_next and arg in CARRIED
    return out


def child_command(item, vram_args: list[str], report_path: Path) -> list[str]:
    config = item.config
    cmd = [sys.executable, "-m", "pytest", item.nodeid, "--rootdir", str(config.rootpath),
           "-s", "-q", "--no-header", "-p", "no:cacheprovider", *vram_args,
           f"--vram-isolated-child={report_path}"]
    if config.inipath:
        cmd += ["-c", str(config.inipath)]
    if config.pluginmanager.hasplugin("xdist"):
        cmd += ["-n", "0"]  # the child runs its one test itself, whatever addopts say
    if config.pluginmanager.hasplugin("benchmark"):
        cmd += ["--benchmark-disable"]  # timings would be lost with the child; memory is not
    return cmd + carried_args(config.invocation_params.args)


def run_item(item, vram_args: list[str]) -> list[pytest.TestReport]:
    """Run ``item`` in a child process; return its reports (with a failed one if it died)."""
    config = item.config
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST_")}
    with tempfile.TemporaryDirectory(prefix="vram-isolate-") as tmp:
        report_path = Path(tmp) / "reports.jsonl"
        start = time.time()
        proc = subprocess.run(child_command(item, vram_args, report_path), cwd=config.rootpath, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
        lines = read_reports(report_path)
    finished = any(FINISHED in data for data in lines)
    reports = [config.hook.pytest_report_from_serializable(config=config, data=data)
               for data in lines if FINISHED not in data]
    output = proc.stdout
    for rep in reports:
        if rep.failed and output:
            rep.sections.append((OUTPUT_SECTION, output))
    dead = describe_exit(proc.returncode, finished)
    last = reports[-1].when if reports else None
    if last == "teardown" and (not dead or reports[-1].failed):
        return reports
    if last == "teardown":  # died after the case had finished: its teardown fails
        reports.pop()
        when = "teardown"
    else:
        when = PHASES[PHASES.index(last) + 1] if last else "setup"
    how = dead or f"stopped before finishing (exit status {proc.returncode})"
    reports.append(failed_report(item, when, how, output, time.time() - start))
    return reports


def read_reports(path: Path) -> list[dict]:
    """The child's serialized reports; a line cut short by a crash is dropped."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return out


def describe_exit(returncode: int, finished: bool = True) -> str | None:
    """How a child died, or None for pytest's exits that mean its tests ran (0: passed, 1: failed).
    A status is given pytest's meaning (3: internal error ...) only if the child's pytest
    ``finished`` its session: a test may end the process itself (``os._exit(3)``)."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"was killed by {name} ({-returncode})"
    if returncode in (0, 1):
        return None
    if not finished:
        return f"exited with status {returncode}"
    meaning = {2: "interrupted", 3: "internal error", 4: "usage error", 5: "no test ran"}
    return f"exited with status {returncode} ({meaning.get(returncode, 'not a pytest exit status')})"


def failed_report(item, when: str, how: str, output: str, duration: float) -> pytest.TestReport:
    longrepr = (f"{item.nodeid}: the isolated process {how} during {when}; "
                f"its output is in the '{OUTPUT_SECTION}' section")
    sections = [(OUTPUT_SECTION, output)] if output else []
    return pytest.TestReport(item.nodeid, item.location, {k: 1 for k in item.keywords}, "failed",
                             longrepr, when, sections=sections, duration=duration, user_properties=[])


FINISHED = "vram_child_exitstatus"  # the child's last line: its pytest ended its session


class ChildReportWriter:
    """The plugin object an isolated child registers (and only it): it appends each test
    report to the parent's file as it happens, one JSON line flushed at once (a crash loses
    nothing finished), and a last line with its exit status when its session ends."""

    def __init__(self, config, path: str):
        self.config = config
        self.path = path

    def pytest_runtest_logreport(self, report) -> None:
        self._append(self.config.hook.pytest_report_to_serializable(config=self.config, report=report))

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session, exitstatus) -> None:
        self._append({FINISHED: int(exitstatus)})

    def _append(self, data: dict) -> None:
        with open(self.path, "a") as handle:
            handle.write(json.dumps(data) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
