"""The record of one measured test (the files that hold records: :mod:`.history`).

A record (in ``benchmark.extra_info["vram"]`` and in ``--vram-json``) holds, in integer bytes:
backend, gpu, budget_bytes, fits, oom_phase, status, trainable_params, baseline_bytes (memory
held when the test started: left by earlier tests), the case's parameters, and per phase {allocated, peak, reserved, context, total, breakdown, oom}.
"""
from __future__ import annotations

import dataclasses
from importlib import metadata

# the distributions whose versions every history records; a project adds its own with the
# pytest_vram_libraries hook (:mod:`.hookspec`)
LIBRARIES = ("torch", "pytest", "pytest-benchmark", "nvidia-ml-py")


def make_record(case: str, nodeid: str, meter, params: dict, expect_oom: bool) -> dict:
    """``params``: the case's parameters, already JSON-native (:func:`stable_params`)."""
    return {
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


def stable_params(callspec) -> dict:
    """The case's parameters as stable JSON (two identical runs give identical files): numbers,
    strings, bools and None as they are, lists/tuples and dicts of them, dataclasses as dicts.
    Anything else (a function, an object whose repr holds its address) becomes the id pytest
    gave it: the callspec's id when it is the only parameter, else pytest's own default id
    (a function's or class's ``__name__``, else the argument name and its index, ``model0``)."""
    if callspec is None:
        return {}
    only = len(callspec.params) == 1
    return {name: _stable(value, lambda: callspec.id if only else _default_id(name, value, callspec))
            for name, value in callspec.params.items()}


_MISSING = object()


def _stable(value, fallback):
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _stable(getattr(value, f.name), fallback) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        items = [_stable(v, lambda: _MISSING) for v in value]
        return fallback() if _MISSING in items else items
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        items = {k: _stable(v, lambda: _MISSING) for k, v in value.items()}
        return fallback() if _MISSING in items.values() else items
    return fallback()


def _default_id(name: str, value, callspec) -> str:
    """pytest's default id for a value it cannot print (``_pytest.python._idval``)."""
    label = getattr(value, "__name__", None)
    return label if isinstance(label, str) else f"{name}{callspec.indices.get(name, 0)}"


def library_versions(extra: list[str] | tuple[str, ...] = ()) -> dict[str, str | None]:
    """Installed versions of the plugin's libraries and ``extra`` (None: not installed)."""
    versions = {}
    for name in dict.fromkeys([*LIBRARIES, *extra]):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions
