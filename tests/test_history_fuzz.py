"""Fuzz the history readers (issue 13, must-have 9): a valid ``--vram-json`` file and a valid
pytest-benchmark JSON, truncated at every byte and with a wrong type at every key path, fed to
``history.load`` and to ``pytest-vram table`` / ``compare``. Each must either load or give one
:class:`HistoryError` (exit code 2) whose message names the file: never another exception."""
import copy
import json
from pathlib import Path

import pytest

from pytest_vram.cli import main
from pytest_vram.history import HistoryError, load
from helpers import benchmark_json

BASELINE = Path(__file__).resolve().parent.parent / "results" / "sim-v100.json"
WRONG = (None, [1], "text", 7, {"k": 1}, True, float("nan"))


def vram_json_doc() -> dict:
    doc = json.loads(BASELINE.read_text())
    return doc | {"records": doc["records"][:2], "order": doc["order"][:2]}


def benchmark_doc() -> dict:
    doc = vram_json_doc()
    return benchmark_json(doc["records"], machine_info={"vram": doc["machine_info"]},
                          fullnames=[r["test"] for r in doc["records"]])


DOCS = {"vram-json": vram_json_doc, "pytest-benchmark": benchmark_doc}


def key_paths(value, path=()):
    """Every path to a value inside ``value`` (object keys and list indices)."""
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, sub in items:
        yield path + (key,)
        yield from key_paths(sub, path + (key,))


def put(path: Path, text: str) -> Path:
    """A fresh file: rewriting one in place costs milliseconds on ext4 (a truncation flushes)."""
    path.unlink(missing_ok=True)
    path.write_text(text)
    return path


def replaced(doc, path, new):
    doc = copy.deepcopy(doc)
    holder = doc
    for key in path[:-1]:
        holder = holder[key]
    holder[path[-1]] = new
    return doc


def check(path: Path, capsys) -> None:
    """The file loads, or is one HistoryError naming it; the CLI agrees (0, or 2 naming it)."""
    try:
        load(path)
        loaded = True
    except HistoryError as exc:
        assert str(exc).startswith(f"{path}: "), str(exc)
        loaded = False
    for argv in (["table", str(path), "--breakdown"], ["compare", str(path), str(path)]):
        code = main(argv)
        err = capsys.readouterr().err
        assert code == (0 if loaded else 2), (argv, err)
        assert loaded or (err.startswith(f"pytest-vram: error: {path}: ") and err.count("\n") == 1), err


@pytest.mark.parametrize("kind", DOCS)
def test_truncated_at_every_byte(tmp_path, capsys, kind):
    """history.load at every byte; the command line (slower: argparse) at every 16th."""
    text = json.dumps(DOCS[kind](), indent=1)
    path = tmp_path / "h.json"
    for end in range(len(text)):
        put(path, text[:end])
        with pytest.raises(HistoryError) as info:   # every proper prefix of an object is broken
            load(path)
        assert str(info.value).startswith(f"{path}: ")
        if end % 16 == 0:
            check(path, capsys)


@pytest.mark.parametrize("kind", DOCS)
def test_a_wrong_type_at_every_key(tmp_path, capsys, kind):
    doc = DOCS[kind]()
    path = tmp_path / "h.json"
    refused = 0
    for keys in list(key_paths(doc)):
        for new in WRONG:
            put(path, json.dumps(replaced(doc, keys, new)))
            try:
                load(path)
            except HistoryError:
                refused += 1
            check(path, capsys)
    assert refused > 100   # the schema is checked, not merely survived
