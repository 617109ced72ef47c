"""What the plugin holds for one pytest session: its options (checked once, with one clear
error each), the records gathered so far, the selection's order, and what earlier tests left
alive. Runs in the controller, in each xdist worker and in each ``--vram-isolate`` child."""
from __future__ import annotations

import os

import pytest

from . import history, isolate, nvml, options, record, workers
from .backends import resolve_backend_name
from .profiles import get_profile
from .shard import parse_shard
from .sizes import format_bytes, parse_size
from .tracker import Leftovers

BUSY_ACTIONS = ("warn", "refuse", "ignore")


class VramWarning(UserWarning):
    """A measurement that may be wrong, for a reason outside the test (a busy GPU)."""


class VramSession:
    def __init__(self, config):
        self.config = config
        try:
            self.backend = resolve_backend_name(options.get(config, "--vram-backend"))
            gpu = options.get(config, "--vram-gpu")
            self.default_profile = get_profile(gpu) if gpu else None
            shard = options.get(config, "--vram-shard")
            self.shard = parse_shard(shard) if shard else None
            self.busy = options.get(config, "--vram-busy")
            if self.busy not in BUSY_ACTIONS:
                raise ValueError(f"--vram-busy: unknown action {self.busy!r}; valid choices: {', '.join(BUSY_ACTIONS)}")
            self.busy_limit = parse_size(options.get(config, "--vram-busy-limit"))
        except ValueError as exc:
            raise pytest.UsageError(str(exc)) from None
        self.json_path = options.get(config, "--vram-json")
        self.child_report = options.get(config, "--vram-isolated-child")
        self.isolate = options.get(config, "--vram-isolate") and not self.child_report
        self.records: list[dict] = []
        self.order: list[str] = []          # the selection (before sharding), collection order
        self.workers: dict[str, dict] = {}  # xdist worker id -> its device description
        self.leftovers = Leftovers()
        self.gate = None
        compare_with = options.get(config, "--vram-compare")
        fail_exprs = options.get(config, "--vram-compare-fail")
        if fail_exprs and not compare_with:
            raise pytest.UsageError("--vram-compare-fail needs --vram-compare PATH|NNNN|latest")
        if compare_with:
            from .gate import Gate

            storage = config.getoption("benchmark_storage", None) if config.pluginmanager.hasplugin("benchmark") else None
            try:
                self.gate = Gate(compare_with, fail_exprs, storage)
            except ValueError as exc:  # a bad expression, or a HistoryError
                raise pytest.UsageError(f"--vram-compare: {exc}") from None
        if self.backend == "cuda" and self.busy != "ignore" and not workers.distributing(config):
            self.check_busy(config)

    def pytest_runtest_logreport(self, report) -> None:
        """Records come on call reports (``user_properties``): from this process, from xdist
        workers (xdist ships every report to the controller) and from isolated children."""
        if self.child_report:
            isolate.write_report(self.config, self.child_report, report)
        if report.when == "call":
            self.records += [value for name, value in report.user_properties if name == "vram"]

    def check_busy(self, config) -> None:
        problem = busy_problem(nvml.foreign_used_bytes(0), self.busy_limit)
        if problem and self.busy == "refuse":
            raise pytest.UsageError(f"{problem} (--vram-busy=refuse)")
        if problem:
            config.issue_config_time_warning(VramWarning(problem), stacklevel=2)

    def child_args(self) -> list[str]:
        """The options an isolated child needs to measure as this session does."""
        args = [f"--vram-backend={self.backend}", "--vram-busy=ignore"]
        return args + ([f"--vram-gpu={self.default_profile.name}"] if self.default_profile else [])

    def describe(self) -> dict:
        info = {"backend": self.backend, "libraries": record.library_versions()}
        if self.backend == "cuda":
            from .backends import CudaBackend

            info.update(CudaBackend.describe_device())
            info["cuda_visible_devices"] = os.environ.get(workers.VISIBLE)
        if self.default_profile:
            info["gpu_profile"] = self.default_profile.name
        if self.workers:
            info["xdist_workers"] = dict(sorted(self.workers.items()))
        return info

    def ordered_records(self) -> list[dict]:
        """Records in collection order, whatever order they finished in (xdist)."""
        return history.in_order(self.records, self.order)


def busy_problem(foreign_bytes: int | None, limit: int) -> str | None:
    """The warning when other processes hold more than ``limit`` bytes of the GPU."""
    if foreign_bytes is None or foreign_bytes <= limit:
        return None
    return (f"the GPU already holds {format_bytes(foreign_bytes)} ({foreign_bytes} bytes) of other "
            f"processes' memory, over --vram-busy-limit={format_bytes(limit)}: cases may run out of "
            "memory early and totals are not what a free card would show")
