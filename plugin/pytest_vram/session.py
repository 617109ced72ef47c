"""What the plugin holds for one pytest session: the records gathered so far, the selection's
order and what earlier tests left alive; at the end, the ``--vram-json`` file and the gate.
Runs in the controller, in each xdist worker and in each ``--vram-isolate`` child.

An interrupted session (Ctrl-C, ``-x``/``--maxfail``, a ``session.shouldstop``) has not run its
whole selection: its document says ``"complete": false`` (every other says ``true``), so it is
never taken for a full history, and it is written only where no file exists yet: a complete
history from an earlier run is left untouched, and the terminal says so.
"""
from __future__ import annotations

import gc

import pytest

from . import history, machine
from .profiles import GpuProfile
from .settings import Settings
from .tracker import Leftovers


class VramSession:
    def __init__(self, settings: Settings, backend: str, profiles: dict[str, GpuProfile], libraries: list[str]):
        self.settings = settings
        self.backend = backend                # resolved: cuda|sim|cpu
        self.profiles = profiles              # built-in and the project's
        self.libraries = libraries            # the project's distributions to record
        self.records: list[dict] = []
        self.order: list[str] = []            # the selection (before sharding), collection order
        self.workers: dict[str, dict] = {}    # xdist worker id -> its device description
        self.leftovers = Leftovers()
        self.gate = None
        self.notes: list[str] = []            # said in the terminal summary

    def pytest_runtest_logreport(self, report) -> None:
        """Records come on call reports (``user_properties``): from this process, from xdist
        workers (xdist ships every report to the controller) and from isolated children."""
        if report.when == "call":
            self.records += [value for name, value in report.user_properties if name == "vram"]

    def baseline_bytes(self, backend) -> int:
        """What the device holds before a test starts. A full ``gc.collect()`` costs ~100 ms in a
        process that imported big libraries, and collecting can only lower the count: so it runs
        only when something is held, to tell a leak from garbage not yet collected."""
        held = backend.held_bytes(self.leftovers)
        if held:
            gc.collect()
            held = backend.held_bytes(self.leftovers)
        return held

    def child_args(self) -> list[str]:
        """The options an isolated child needs to measure as this session does."""
        args = [f"--vram-backend={self.backend}", "--vram-busy=ignore"]
        return args + ([f"--vram-gpu={self.settings.gpu.name}"] if self.settings.gpu else [])

    def describe(self) -> dict:
        return machine.describe(self.backend, self.settings.gpu, self.libraries, self.workers)

    def ordered_records(self) -> list[dict]:
        """Records in collection order, whatever order they finished in (xdist)."""
        return history.in_order(self.records, self.order)

    def finish(self, session) -> None:
        """Write ``--vram-json`` and run the gate (the controller, or a serial session; an
        isolated child's records go back to its parent instead)."""
        if not self.records or self.settings.isolated_child:
            return
        complete = not interrupted(session)
        records, description = self.ordered_records(), self.describe()
        path = self.settings.json
        if path and (complete or not path.exists()):
            document = history.vram_json(records, description, self.order, complete=complete)
            history.write_json_atomic(path, document)
            if not complete:
                self.notes.append(f"the session was interrupted: {path} holds its {len(records)} "
                                  "records marked \"complete\": false")
        elif path:
            self.notes.append(f"the session was interrupted: {path} was left as it was "
                              f"(this run's {len(records)} records are not written over a saved history)")
        if self.gate:
            self.gate.run(records, description)
            if self.gate.regressions and session.exitstatus == pytest.ExitCode.OK:
                session.exitstatus = pytest.ExitCode.TESTS_FAILED


def interrupted(session) -> bool:
    """True when the session stopped before running its whole selection."""
    return (session.exitstatus in (pytest.ExitCode.INTERRUPTED, pytest.ExitCode.INTERNAL_ERROR)
            or bool(session.shouldstop) or bool(session.shouldfail))
