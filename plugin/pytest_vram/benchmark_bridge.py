"""Everything pytest-vram knows of pytest-benchmark, in one place. Torch-free; it imports
nothing of the plugin, so there is no import cycle.

- each record goes into ``benchmark.extra_info["vram"]`` (:func:`store_record`), so
  ``--benchmark-json`` / ``--benchmark-autosave`` histories carry memory;
- the session's description (backend, GPU, library versions) goes into
  ``machine_info["vram"]`` (:class:`MachineInfo`, a plugin object registered only when
  pytest-benchmark is installed);
- ``--vram-compare NNNN|latest`` finds a saved run through pytest-benchmark's own storage API
  (:func:`resolve`: ``FileStorage.query``, which knows its folder layout), not by globbing;
- under xdist pytest-benchmark turns itself off: :data:`XDIST_NOTICE` says so, once.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

PLUGIN = "benchmark"  # pytest-benchmark's name in pytest's plugin manager
XDIST_NOTICE = ("pytest-benchmark turns itself off under xdist (no timings, no --benchmark-json "
                "or --benchmark-autosave); memory records still go to --vram-json and the table")
RUN = "[0-9][0-9][0-9][0-9]_"  # a saved run's file name starts with its number: 0001_...


def installed(config) -> bool:
    return config.pluginmanager.hasplugin(PLUGIN)


def store_record(item, rec: dict) -> None:
    """Put ``rec`` in the test's ``benchmark.extra_info`` when it uses the fixture (mutated in
    place: pytest-benchmark keeps extra_info by reference)."""
    benchmark = getattr(item, "funcargs", {}).get("benchmark")
    if benchmark is not None:
        benchmark.extra_info["vram"] = rec


class MachineInfo:
    """``pytest_benchmark_update_machine_info``: the session's description, asked for when
    pytest-benchmark saves (``describe`` is the session's, passed in: no import of the plugin)."""

    def __init__(self, describe: Callable[[], dict]):
        self._describe = describe

    def pytest_benchmark_update_machine_info(self, config, machine_info):
        machine_info["vram"] = self._describe()


def storage_option(config) -> str | None:
    """``--benchmark-storage`` (pytest-benchmark's default ``file://./.benchmarks``), or None."""
    return config.getoption("benchmark_storage", None) if installed(config) else None


def resolve(spec: str, storage: str | None) -> Path:
    """``--vram-compare``'s value as a file: PATH as given, or a pytest-benchmark run number
    (NNNN) or ``latest`` in its storage. Raises ValueError naming what was looked for and where."""
    if spec != "latest" and not spec.isdigit():
        return Path(spec)
    url = storage or "file://./.benchmarks"
    if "://" in url and not url.startswith("file://"):
        raise ValueError(f"--vram-compare {spec}: only pytest-benchmark's file storage can be read, "
                         f"not {url}; give the saved file's PATH instead")
    root = Path(url.removeprefix("file://"))
    if not root.is_dir():  # FileStorage would create it
        raise ValueError(f"no saved pytest-benchmark run {spec!r}: no storage folder {root}")
    from pytest_benchmark.storage.file import FileStorage

    files = FileStorage(root, logger=logging.getLogger("pytest-vram")).query(
        RUN if spec == "latest" else f"{int(spec):04d}_")
    if not files:
        raise ValueError(f"no saved pytest-benchmark run {spec!r} under {root}")
    return files[-1]
