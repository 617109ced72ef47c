"""Saved histories, read and written. Reading: a ``--vram-json`` file or a pytest-benchmark JSON
whose benchmarks carry ``extra_info["vram"]``. Any file that cannot be used gets one clear
:class:`HistoryError` naming the file and what is wrong, never another exception: the history
commands and ``--vram-compare`` read files a user points them at, often the wrong one.

Writing goes to a temporary file and a rename, so no file is ever half-written.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .schema import FORMAT, VERSION, HistoryError, Record, identity, validate_record

__all__ = ["History", "HistoryError", "load", "write_json_atomic", "in_order", "vram_json"]


@dataclass
class History:
    path: str
    records: list[Record]
    machine_info: dict
    order: list[str] = field(default_factory=list)  # --vram-json only: the selection's order
    complete: bool = True  # False: written by an interrupted session (not a usable baseline)

    def by_case(self) -> dict[str, Record]:
        """Records by display name (``case``); two tests may share one: see :meth:`by_test`."""
        return {r["case"]: r for r in self.records}

    def by_test(self) -> dict[str, Record]:
        """Records by identity: the node id (``case`` in histories older than ``test``)."""
        return {identity(r): r for r in self.records}

    def incomplete_warning(self) -> str | None:
        if self.complete:
            return None
        return (f"warning: {self.path} is incomplete (\"complete\": false: the session that wrote it "
                "was interrupted); cases missing from it were not measured")


def load(path: str | os.PathLike) -> History:
    path = Path(path)
    data = _read_json(path)
    if data.get("format") == FORMAT:
        if data.get("version") != VERSION:
            raise HistoryError(f"{path}: pytest-vram history version {data.get('version')!r}; "
                               f"this pytest-vram reads version {VERSION}")
        records = data.get("records")
        machine, order, complete = data.get("machine_info", {}), data.get("order", []), data.get("complete", True)
        if not isinstance(records, list):
            raise HistoryError(f"{path}: 'records' should be a list of records, found {_kind(records)}")
    elif "benchmarks" in data and "machine_info" in data:
        records, machine, order, complete = _benchmark_records(path, data), data["machine_info"], [], True
        if not isinstance(machine, dict):
            raise HistoryError(f"{path}: 'machine_info' should be an object, found {_kind(machine)}")
        machine = machine.get("vram", {})
    else:
        raise HistoryError(f"{path}: neither a pytest-vram --vram-json file nor a pytest-benchmark "
                           "JSON (no 'format' or 'benchmarks' key)")
    if not isinstance(machine, dict):
        raise HistoryError(f"{path}: the machine description should be an object, found {_kind(machine)}")
    if not isinstance(order, list) or not all(isinstance(n, str) for n in order):
        raise HistoryError(f"{path}: malformed 'order' (should be a list of test ids)")
    if not isinstance(complete, bool):
        raise HistoryError(f"{path}: 'complete' should be true or false, found {_kind(complete)}")
    for i, rec in enumerate(records):
        validate_record(rec, f"{path}: record {i}")
    if not records:
        raise HistoryError(f"{path}: holds no memory records")
    return History(str(path), records, machine, order, complete)


def _read_json(path: Path) -> dict:
    if path.is_dir():
        raise HistoryError(f"{path}: is a directory, not a history file")
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise HistoryError(f"{path}: no such file") from None
    except OSError as exc:
        raise HistoryError(f"{path}: cannot be read: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HistoryError(f"{path}: not UTF-8 text (byte {exc.start}): not a JSON history") from None
    if not text.strip():
        raise HistoryError(f"{path}: the file is empty")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError; an int of > 4300 digits
        raise HistoryError(f"{path}: not valid JSON (truncated or corrupt?): {exc}") from None
    if not isinstance(data, dict):
        raise HistoryError(f"{path}: expected a JSON object, found {_kind(data)}")
    return data


def _benchmark_records(path: Path, data: dict) -> list:
    """The vram records of a pytest-benchmark JSON; a record without ``test`` (written before it
    existed) takes its identity from the benchmark's ``fullname``, pytest's node id."""
    benchmarks = data["benchmarks"]
    if not isinstance(benchmarks, list):
        raise HistoryError(f"{path}: 'benchmarks' should be a list, found {_kind(benchmarks)}")
    records = []
    for i, bench in enumerate(benchmarks):
        if not isinstance(bench, dict):
            raise HistoryError(f"{path}: benchmarks[{i}] should be an object, found {_kind(bench)}")
        extra = bench.get("extra_info", {})
        if not isinstance(extra, dict):
            raise HistoryError(f"{path}: benchmarks[{i}].extra_info should be an object, found {_kind(extra)}")
        if "vram" not in extra:
            continue
        rec, fullname = extra["vram"], bench.get("fullname")
        if isinstance(rec, dict) and "test" not in rec and isinstance(fullname, str) and fullname:
            rec = dict(rec, test=fullname)
        records.append(rec)
    return records


def _kind(value: object) -> str:
    return "null" if value is None else type(value).__name__


def write_json_atomic(path: str | os.PathLike, data: dict) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename.

    The temporary file is ``.NAME.<random>.tmp`` beside the target. It is removed on every
    failure (KeyboardInterrupt included); ones that a killed earlier run left behind are
    removed before writing. So one process writes a given file at a time: two writing the same
    path at once may remove each other's temporary file. ``mkstemp`` creates files 0600; the
    result is given the mode a plain ``open()`` would (0666 less the umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{_glob_escape(path.name)}.*.tmp"):
        stale.unlink(missing_ok=True)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2, sort_keys=False)
            handle.write("\n")
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0o022)  # the only portable way to read it is to set it
    os.umask(mask)
    return mask


def _glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[]" else c for c in name)


def in_order(records: list[dict], order: list[str]) -> list[dict]:
    """``records`` sorted by their test's place in ``order`` (test ids); others last, as they were."""
    position = {nodeid: i for i, nodeid in enumerate(order)}
    return sorted(records, key=lambda r: position.get(r.get("test"), len(position)))


def vram_json(records: list[dict], machine_info: dict, order: list[str] | None = None,
              complete: bool = True) -> dict:
    """The document ``--vram-json`` writes. ``order``: the session's selected tests in collection
    order (before ``--vram-shard``), which ``pytest-vram merge`` restores across shards.
    ``complete``: False when the session was interrupted (the gate refuses such a baseline)."""
    doc = {"format": FORMAT, "version": VERSION, "complete": complete,
           "machine_info": machine_info, "records": records}
    return doc | ({"order": order} if order else {})
