"""The record schema, torch-free: what a memory record and a history file hold.

Everything the history side (``pytest-vram table|compare|plot|merge``) needs to read, check
and display records lives here and imports no torch, so those commands run on a CI box
without it. The measuring side (meter, backends, simulator) writes records of this shape.
(No ``from __future__ import annotations`` here: Python 3.11's TypedDict reads ``Required``
only from evaluated annotations.)

The record's keys are spelled once, in :class:`Record` and :class:`Phase`; :func:`validate_record`
checks a loaded record against those very annotations, so the types the history commands rely
on and the types they check cannot drift apart.
"""
import functools
import types
import typing
from typing import NotRequired, Required, TypedDict

FORMAT = "pytest-vram"
VERSION = 1

# What a phase's peak allocated is split into (``breakdown``); the parts sum to the phase's peak.
CATEGORIES = (
    "frozen_weights", "quantized_weights", "trainable_params",
    "gradients", "optimizer_state", "activations",
)
DEFAULT_CATEGORY = "activations"

BACKENDS = ("auto", "cuda", "sim", "cpu")
STATUSES = ("fits", "over budget", "OOM")


class HistoryError(ValueError):
    """A history file (or a record in it) that cannot be used: one message naming the file."""


class Phase(TypedDict):
    """One named phase of a test, in integer bytes. ``total`` = (``reserved`` if the backend has
    a caching allocator, else ``peak``) + ``context``: what the device must hold."""
    allocated: int
    peak: int
    reserved: int | None
    context: int
    total: int
    breakdown: dict[str, int]
    oom: bool
    # the raw tensor bytes' peak, before the allocator's rounding (torch.cuda.memory_stats()
    # "requested_bytes.all.peak"); None on the cpu backend; absent in older histories
    peak_requested: NotRequired[int | None]


class Parallel(TypedDict):
    """One rank of a multi-GPU job: the world size, the strategy (e.g. "fsdp", "ddp") and the
    rank whose memory the record holds."""
    ranks: int
    strategy: str
    rank: int


class Record(TypedDict, total=False):
    """One measured test. ``test`` is its identity (the pytest node id, file::test[params]);
    ``case`` its display name. Histories written before ``test`` existed are keyed by ``case``."""
    case: Required[str]
    test: str
    backend: str
    gpu: str | None
    budget_bytes: int | None
    fits: bool
    oom_phase: str | None
    status: Required[str]
    expect_oom: bool
    trainable_params: int | None
    peak_total_bytes: int
    baseline_bytes: int | None  # memory held when the test started: left by an earlier test
    phases: Required[dict[str, Phase]]
    params: dict
    parallel: Parallel  # only where the test measured one rank of a multi-GPU job


FIELDS = tuple(Phase.__annotations__)  # allocated, peak, reserved, context, total, breakdown, oom, peak_requested
SIZE_FIELDS = tuple(f for f in FIELDS if f not in ("breakdown", "oom"))


def identity(record: Record) -> str:
    """The case's identity: its node id, or (an older history) its display name."""
    return record.get("test") or record["case"]


def display_names(records: list[Record]) -> dict[str, str]:
    """Each record's identity -> the shortest name that tells it apart: its ``case``, else its
    test function with parameters (``test_forward[1]``), else its full node id."""
    levels = (lambda r: r["case"], lambda r: identity(r).rsplit("::", 1)[-1])
    owners = [{} for _ in levels]  # per level: name -> the identities called that
    for r in records:
        for level, seen in zip(levels, owners):
            seen.setdefault(level(r), set()).add(identity(r))
    names = {}
    for r in records:
        unique = [level(r) for level, seen in zip(levels, owners) if len(seen[level(r)]) == 1]
        names[identity(r)] = unique[0] if unique else identity(r)
    return names


def validate_record(rec: object, where: str) -> Record:
    """``rec`` if it has the shape of :class:`Record`, else :class:`HistoryError` naming ``where``
    (the file and record), the bad key path and what it should hold. Unknown keys are kept:
    a newer pytest-vram may add some."""
    problem = _check(rec, Record, "record")
    if problem is None and rec["status"] not in STATUSES:
        problem = f"record.status is {rec['status']!r}; valid choices: {', '.join(STATUSES)}"
    if problem:
        raise HistoryError(f"{where}: {problem}")
    return rec


def _check(value: object, hint, path: str) -> str | None:
    """Why ``value`` does not match the annotation ``hint``, or None."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if typing.is_typeddict(hint) or origin is dict:
        if not isinstance(value, dict):
            return _wrong(value, "an object", path)
        return _check_fields(value, hint, path) if origin is None else _check_values(value, args, path)
    if args and origin in (typing.Union, types.UnionType):
        if any(_check(value, a, path) is None for a in args):
            return None
        return _wrong(value, " or ".join(_name(a) for a in args), path)
    if hint is object:
        return None
    if hint is type(None):
        return None if value is None else _wrong(value, "null", path)
    # bool is an int in Python, not in a record: True is no byte count.
    if hint is int and (isinstance(value, bool) or not isinstance(value, int)):
        return _wrong(value, "an integer", path)
    if not isinstance(value, hint):
        return _wrong(value, _name(hint), path)
    return None


def _check_fields(value: dict, typed_dict, path: str) -> str | None:
    missing = sorted(k for k in typed_dict.__required_keys__ if k not in value)
    if missing:
        return f"{path} lacks {', '.join(repr(k) for k in missing)}"
    problems = (_check(value[key], hint, f"{path}.{key}") for key, hint in _hints(typed_dict).items()
                if key in value)
    return next((p for p in problems if p), None)


def _check_values(value: dict, args: tuple, path: str) -> str | None:
    """A ``dict[str, X]``: JSON keys are always strings, so only the values are checked."""
    value_hint = args[1] if args else object
    problems = (_check(sub, value_hint, f"{path}.{key}") for key, sub in value.items())
    return next((p for p in problems if p), None)


@functools.cache
def _hints(typed_dict) -> dict:
    return {k: _unrequired(v) for k, v in typing.get_type_hints(typed_dict).items()}


def _unrequired(hint):
    return typing.get_args(hint)[0] if typing.get_origin(hint) is Required else hint


def _name(hint) -> str:
    names = {int: "an integer", str: "a string", bool: "true/false", type(None): "null", dict: "an object"}
    return names.get(hint, names.get(typing.get_origin(hint), str(hint)))


def _wrong(value: object, expected: str, path: str) -> str:
    found = "null" if value is None else f"{type(value).__name__} {_short(value)}"
    return f"{path} should be {expected}, found {found}"


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
