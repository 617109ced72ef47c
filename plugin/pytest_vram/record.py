"""The record of one measured test (the files that hold records: :mod:`.history`).

A record (in ``benchmark.extra_info["vram"]`` and in ``--vram-json``) holds, in integer bytes:
backend, gpu, budget_bytes, fits, oom_phase, status, trainable_params, baseline_bytes (memory
held when the test started: left by earlier tests), the case's parameters, and per phase {allocated, peak, reserved, context, total, breakdown, oom}.
"""
from __future__ import annotations

import dataclasses
from importlib import metadata

LIBRARIES = ("torch", "transformers", "diffusers", "peft", "bitsandbytes", "lycoris-lora",
             "pytest", "pytest-benchmark", "nvidia-ml-py")


def status_of(fits: bool, oom_phase: str | None) -> str:
    if oom_phase is not None:
        return "OOM"
    return "fits" if fits else "over budget"


def make_record(case: str, nodeid: str, meter, params: dict, expect_oom: bool) -> dict:
    return {
        "case": case,
        "test": nodeid,
        "backend": meter.backend,
        "gpu": meter.gpu,
        "budget_bytes": meter.budget,
        "fits": meter.fits,
        "oom_phase": meter.oom_phase,
        "status": status_of(meter.fits, meter.oom_phase),
        "expect_oom": expect_oom,
        "trainable_params": meter.trainable_params,
        "peak_total_bytes": meter.peak_total,
        "baseline_bytes": meter.baseline_bytes,
        "phases": {name: phase.to_dict() for name, phase in meter.phases.items()},
        "params": {key: jsonable(value) for key, value in params.items()},
    }


def jsonable(value):
    """A case parameter as JSON: dataclasses as dicts, other objects as their str()."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: jsonable(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return str(value)


def library_versions() -> dict[str, str | None]:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions
