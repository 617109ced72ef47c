"""The record of one measured test (the files that hold records: :mod:`.history`).

A record (in ``benchmark.extra_info["vram"]`` and in ``--vram-json``) holds, in integer bytes:
backend, gpu, budget_bytes, fits, oom_phase, status, trainable_params, baseline_bytes (memory
held when the test started: left by earlier tests), the case's parameters, ``parallel``
({ranks, strategy, rank}) where the test measured one rank of a multi-GPU job, and per phase {allocated, peak, reserved, context, total, breakdown, oom}.
"""
from __future__ import annotations

import dataclasses
from importlib import metadata

# the distributions whose versions every history records; a project adds its own with the
# pytest_vram_libraries hook (:mod:`.hookspec`)
LIBRARIES = ("torch", "pytest", "pytest-benchmark", "nvidia-ml-py")


# A dataclass field with ``metadata={OMIT_AT_DEFAULT: True}`` is left out of a record's
# parameters while it holds its default: an optional field added to a case type later (a
# multi-GPU layout) then leaves every existing case's record as it was, comparable with old
# histories.
OMIT_AT_DEFAULT = "pytest_vram_omit_at_default"


def make_record(case: str, nodeid: str, meter, params: dict, expect_oom: bool) -> dict:
    """``params``: the case's parameters, already JSON-native (:func:`stable_params`)."""
    record = {
        "case": case,
        "test": nodeid,
        "backend": meter.backend,
        "gpu": meter.gpu,
        "budget_bytes": meter.budget,
        "fits": meter.fits,
        "oom_phase": meter.oom_phase,
        "status": meter.status,
        "expect_oom": expect_oom,
        "trainable_params": meter.trainable_params,
        "peak_total_bytes": meter.peak_total,
        "baseline_bytes": meter.baseline_bytes,
        "phases": {name: phase.to_dict() for name, phase in meter.phases.items()},
        "params": params,
    }
    if meter.layout is not None:
        record["parallel"] = dict(meter.layout)
    return record


def stable_params(callspec) -> dict:
    """The case's parameters as stable JSON (two identical runs give identical files): numbers,
    strings, bools and None as they are, lists/tuples and dicts of them, dataclasses as dicts
    (without the fields marked :data:`OMIT_AT_DEFAULT` that hold their default),
    a function or class as its ``__name__`` (pytest's id for it). Any other object (whose repr
    would hold its address) makes the whole parameter its pytest id: the callspec's id when it
    is the test's only parameter, else pytest's default, the argument name and index (``obj0``)."""
    if callspec is None:
        return {}
    out = {}
    for name, value in callspec.params.items():
        try:
            out[name] = _stable(value)
        except _Unstable:
            only = len(callspec.params) == 1
            out[name] = callspec.id if only else f"{name}{callspec.indices.get(name, 0)}"
    return out


class _Unstable(Exception):
    pass


def _stable(value):
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _stable(getattr(value, f.name)) for f in dataclasses.fields(value)
                if not (f.metadata.get(OMIT_AT_DEFAULT) and getattr(value, f.name) == f.default)}
    if isinstance(value, (list, tuple)):
        return [_stable(v) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _stable(v) for k, v in value.items()}
    name = getattr(value, "__name__", None)
    if isinstance(name, str):
        return name
    raise _Unstable


def library_versions(extra: list[str] | tuple[str, ...] = ()) -> dict[str, str | None]:
    """Installed versions of the plugin's libraries and ``extra`` (None: not installed)."""
    versions = {}
    for name in dict.fromkeys([*LIBRARIES, *extra]):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions
