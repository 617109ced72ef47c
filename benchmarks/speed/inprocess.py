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


def main(argv: list[str]) -> int:
    """``python benchmarks/speed/inprocess.py FIELD=VALUE ...``: build the Case from the fields
    (``model=llama-2-70b quantization=nf4-dq checkpointing=1 gpu=a100_80gb``), run it once in
    this fresh process (imports not counted; no warm-up, so first-call caches are), and print
    JSON: seconds, the step's seconds, the process's peak RSS in bytes (``ru_maxrss``, KiB on
    Linux) and each phase's peak and reserved bytes."""
    import dataclasses
    import json
    import resource

    fields = {f.name: f.type for f in dataclasses.fields(Case)}
    values = {}
    for item in argv:
        name, _, text = item.partition("=")
        if name not in fields:
            raise SystemExit(f"unknown Case field {name!r}; valid choices: {', '.join(fields)}")
        default = Case.__dataclass_fields__[name].default
        values[name] = bool(int(text)) if isinstance(default, bool) else int(text) if isinstance(default, int) else text
    case = Case(**values)
    seconds, step_seconds, phases = run_in_process(case)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"case": case.id, "seconds": seconds, "step_seconds": step_seconds, "peak_rss_bytes": rss,
                      "phases": {n: {"peak": p["peak"], "reserved": p["reserved"]} for n, p in phases.items()}}))
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
