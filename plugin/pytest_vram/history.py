"""Saved histories, read and written. Reading: a ``--vram-json`` file or a pytest-benchmark JSON whose
benchmarks carry ``extra_info["vram"]``. Bad files get one clear :class:`HistoryError` naming
the file and what is wrong. Writing goes to a temporary file and a rename, so no file is
ever half-written."""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .schema import FORMAT, VERSION


class HistoryError(ValueError):
    pass


@dataclass
class History:
    path: str
    records: list[dict]
    machine_info: dict
    order: list[str] = field(default_factory=list)  # --vram-json only: the selection's order

    def by_case(self) -> dict[str, dict]:
        return {r["case"]: r for r in self.records}


def load(path: str | Path) -> History:
    path = Path(path)
    if not path.is_file():
        raise HistoryError(f"{path}: no such file")
    text = path.read_text()
    if not text.strip():
        raise HistoryError(f"{path}: the file is empty")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise HistoryError(f"{path}: not valid JSON (truncated or corrupt?): {exc}") from None
    if not isinstance(data, dict):
        raise HistoryError(f"{path}: expected a JSON object, found {type(data).__name__}")
    if data.get("format") == FORMAT:
        if data.get("version") != VERSION:
            raise HistoryError(f"{path}: pytest-vram history version {data.get('version')!r}; "
                               f"this pytest-vram reads version {VERSION}")
        records = data.get("records")
        machine = data.get("machine_info", {})
        order = data.get("order", [])
    elif "benchmarks" in data and "machine_info" in data:
        records = [b["extra_info"]["vram"] for b in data["benchmarks"]
                   if isinstance(b.get("extra_info", {}).get("vram"), dict)]
        machine = data["machine_info"].get("vram", {})
        order = []
    else:
        raise HistoryError(f"{path}: neither a pytest-vram --vram-json file nor a pytest-benchmark "
                           "JSON (no 'format' or 'benchmarks' key)")
    if not isinstance(records, list) or not all(isinstance(r, dict) and "case" in r and "phases" in r
                                                  for r in records):
        raise HistoryError(f"{path}: malformed records (each needs 'case' and 'phases')")
    if not records:
        raise HistoryError(f"{path}: holds no memory records")
    if not isinstance(order, list) or not all(isinstance(n, str) for n in order):
        raise HistoryError(f"{path}: malformed 'order' (a list of test ids)")
    return History(str(path), records, machine, order)


def write_json_atomic(path: str | os.PathLike, data: dict) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=2, sort_keys=False)
            handle.write("\n")
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise

def in_order(records: list[dict], order: list[str]) -> list[dict]:
    """``records`` sorted by their test's place in ``order`` (test ids); others last, as they were."""
    position = {nodeid: i for i, nodeid in enumerate(order)}
    return sorted(records, key=lambda r: position.get(r.get("test"), len(position)))

def vram_json(records: list[dict], machine_info: dict, order: list[str] | None = None) -> dict:
    """The document ``--vram-json`` writes. ``order``: the session's selected tests in collection
    order (before ``--vram-shard``), which ``pytest-vram merge`` restores across shards."""
    doc = {"format": FORMAT, "version": VERSION, "machine_info": machine_info, "records": records}
    return doc | ({"order": order} if order else {})

