"""Run one suite case under the simulator in this process, as the ``vram`` fixture would, and
time it: what the speed benchmark calls "in process" (no pytest, no imports counted).

The backend, meter and flow are the plugin's and the suite's own (``make_backend``, ``Meter``,
``fixtures.suite.run_case``); only pytest-benchmark is replaced by :class:`TimedCall`, which
calls the step once, as ``benchmark.pedantic(rounds=1, iterations=1)`` does, and times it.
"""
from __future__ import annotations

import time

from pytest_vram.backends import make_backend
from pytest_vram.meter import Meter, PhaseOOM
from pytest_vram.profiles import get_profile

from fixtures.cases import CASES, Case
from fixtures.suite import run_case


class TimedCall:
    """pytest-benchmark's ``pedantic`` with rounds=1, iterations=1; keeps the call's seconds."""

    def __init__(self):
        self.seconds = 0.0

    def pedantic(self, target, rounds=1, iterations=1, args=(), kwargs=None):
        start = time.perf_counter()
        try:
            return target(*args, **(kwargs or {}))
        finally:
            self.seconds = time.perf_counter() - start


def case_by_id(case_id: str) -> Case:
    for case in CASES:
        if case.id == case_id:
            return case
    raise ValueError(f"unknown case {case_id!r}; valid choices: {', '.join(c.id for c in CASES)}")


def run_in_process(case: Case, budget: int | None = None) -> tuple[float, float, dict]:
    """Seconds for creation + step, seconds for the step's training call alone, and the phases
    as record dicts. ``budget`` (bytes) defaults to the case's GPU (a V100's 16 GiB)."""
    profile = get_profile(case.gpu)
    budget = profile.total_bytes if budget is None else budget
    backend = make_backend("sim", profile, budget)
    meter = Meter(backend, profile, budget)
    step = TimedCall()
    start = time.perf_counter()
    backend.start()
    try:
        run_case(case, meter, step)
    except PhaseOOM:
        backend.release()
    finally:
        backend.stop()
    seconds = time.perf_counter() - start
    return seconds, step.seconds, {name: phase.to_dict() for name, phase in meter.phases.items()}
