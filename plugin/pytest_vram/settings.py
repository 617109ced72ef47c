"""The session's settings: every option of :mod:`.options` parsed once, at configure time, into
a frozen :class:`Settings`. Each option's value is checked here, in one place, by the type it
declares, and a bad one is one ``pytest.UsageError`` naming the option, the value and the valid
choices. Nothing else reads flag strings.

An output file (``--vram-json``) is checked here too, before the first test runs: a target
that is a directory, a parent that is a file, or a folder where no file can be created would
otherwise be found only after every test ran. Torch-free (the backend ``auto`` is resolved by
:func:`.backends.resolve_backend_name`, which needs torch).
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from .options import OPTIONS, Option, raw
from .profiles import GpuProfile, get_profile
from .shard import Shard, parse_shard
from .sizes import parse_size


@dataclass(frozen=True)
class Settings:
    backend: str = "auto"                 # as asked: auto|cuda|sim|cpu
    gpu: GpuProfile | None = None         # --vram-gpu: the profile of tests without a marker
    json: Path | None = None              # --vram-json, checked writable
    compare: str | None = None            # PATH, NNNN or latest
    compare_fail: tuple[str, ...] = ()    # gate expressions (parsed by the gate)
    isolate: bool = False
    shard: Shard | None = None
    busy: str = "warn"
    busy_limit: int = 512 * 2**20
    breakdown: bool = False
    isolated_child: str | None = None     # in an isolated child: where its reports go

    @classmethod
    def from_config(cls, config, profiles: dict[str, GpuProfile] | None = None) -> "Settings":
        """Parse every option; raises ``pytest.UsageError`` for the first bad one."""
        values = {}
        for opt in OPTIONS:
            try:
                values[opt.name] = parse(opt, raw(config, opt), profiles)
            except ValueError as exc:
                raise pytest.UsageError(str(exc)) from None
        if values["compare_fail"] and not values["compare"]:
            raise pytest.UsageError("--vram-compare-fail needs --vram-compare PATH|NNNN|latest")
        return cls(**values)


def parse(opt: Option, value, profiles: dict[str, GpuProfile] | None = None):
    """``value`` (a string from the command line or ini file) as the option's type says."""
    if opt.type == "list":
        return tuple(value)
    if opt.type == "switch":
        return bool(value)
    if value is None or value == "":
        return None
    if opt.type == "choice":
        if value not in opt.choices:
            raise ValueError(f"{opt.flag}: unknown {opt.noun} {value!r}; valid choices: {', '.join(opt.choices)}")
        return value
    if opt.type == "size":
        try:
            return parse_size(value)
        except ValueError as exc:
            raise ValueError(f"{opt.flag}: {exc}") from None
    if opt.type == "profile":
        return get_profile(value, profiles)
    if opt.type == "shard":
        return parse_shard(value)
    if opt.type == "output":
        return writable_output(opt.flag, value)
    return value


def writable_output(flag: str, value: str) -> Path:
    """``value`` as a path a file can be written to (through a temporary file in its folder and
    a rename, as :func:`.history.write_json_atomic` does). Raises ValueError naming the path."""
    path = Path(value)
    if path.is_dir():
        raise ValueError(f"{flag}={value}: is a directory; give a file path such as {path / 'vram.json'}")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent  # missing folders are created when the file is written
    if not folder.is_dir():
        raise ValueError(f"{flag}={value}: cannot create the file: {folder} is not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=folder)
    except OSError as exc:
        raise ValueError(f"{flag}={value}: cannot write in {folder}: {exc.strerror or exc}") from None
    os.close(fd)
    os.unlink(probe)
    return path
