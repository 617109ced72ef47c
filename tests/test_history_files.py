"""History files: every wrong shape is one clear error naming the file; writing never leaves a
temporary file, honours the umask, and a pytest-benchmark record takes its benchmark's node id."""
import json
import os
import stat

import pytest

from pytest_vram import history
from pytest_vram.cli import main
from pytest_vram.history import HistoryError, load, vram_json, write_json_atomic
from pytest_vram.merge import merge
from pytest_vram.schema import validate_record
from helpers import benchmark_json, rec


def write(path, doc):
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


VALID = {"format": "pytest-vram", "version": 1, "machine_info": {}, "records": [rec("a", 1)]}


@pytest.mark.parametrize("doc, message", [
    (VALID | {"records": [{"case": "a", "phases": {}}]}, "record 0: record lacks 'status'"),
    (VALID | {"records": [rec("a", 1) | {"status": "fine"}]}, "record.status is 'fine'; valid choices: fits"),
    (VALID | {"records": [rec("a", 1) | {"budget_bytes": "16GB"}]}, "record.budget_bytes should be an integer"),
    (VALID | {"records": [rec("a", 1) | {"phases": {"step": {"peak": 1}}}]}, "record.phases.step lacks"),
    (VALID | {"records": {"a": 1}}, "'records' should be a list of records, found dict"),
    (VALID | {"machine_info": None}, "the machine description should be an object, found null"),
    (VALID | {"order": "test_a"}, "malformed 'order'"),
    (VALID | {"order": [1, 2]}, "malformed 'order'"),
    (VALID | {"complete": "no"}, "'complete' should be true or false, found str"),
    (VALID | {"records": []}, "holds no memory records"),
    ("[1, 2]", "expected a JSON object, found list"),
    ("[" * 100_000, "not valid JSON"),
    ('{"format": "pytest-vram", "version": ' + "9" * 5000 + "}", "not valid JSON"),
    (benchmark_json([rec("a", 1)], machine_info=None) | {"machine_info": None},
     "'machine_info' should be an object, found null"),
    (benchmark_json([rec("a", 1)], machine_info=[]), "'machine_info' should be an object, found list"),
    (benchmark_json([rec("a", 1)]) | {"benchmarks": [1]}, "benchmarks[0] should be an object, found int"),
    (benchmark_json([rec("a", 1)]) | {"benchmarks": {}}, "'benchmarks' should be a list, found dict"),
    (benchmark_json([rec("a", 1)]) | {"benchmarks": [{"extra_info": []}]}, "benchmarks[0].extra_info should be"),
    (benchmark_json([{"case": "a"}]), "record 0: record lacks 'phases', 'status'"),
    (benchmark_json([rec("a", 1)], machine_info={"vram": 3}), "the machine description should be an object"),
])
def test_a_malformed_history_is_one_error_naming_the_file(tmp_path, capsys, doc, message):
    path = write(tmp_path / "h.json", doc)
    with pytest.raises(HistoryError, match=None) as info:
        load(path)
    assert str(info.value).startswith(f"{path}: ") and message in str(info.value)
    assert main(["table", str(path)]) == 2
    assert message in capsys.readouterr().err


def test_non_utf8_bytes_and_a_directory_name_the_path(tmp_path):
    path = tmp_path / "latin1.json"
    path.write_bytes(b'{"format": "pytest-vram", "caf\xe9": 1}')
    with pytest.raises(HistoryError, match=f"^{path}: not UTF-8 text"):
        load(path)
    with pytest.raises(HistoryError, match=f"^{tmp_path}: is a directory, not a history file"):
        load(tmp_path)


def test_pytest_benchmark_records_take_the_node_id_from_fullname(tmp_path):
    doc = benchmark_json([rec("1", 1), rec("1", 2)], fullnames=["t.py::test_forward[1]", "t.py::test_backward[1]"])
    loaded = load(write(tmp_path / "b.json", doc))
    assert list(loaded.by_test()) == ["t.py::test_forward[1]", "t.py::test_backward[1]"]
    assert loaded.machine_info == {"backend": "sim"}


def test_a_record_keeps_its_own_node_id_and_unknown_keys(tmp_path):
    record = rec("a", 1) | {"test": "t.py::test[a]", "added_later": [1]}
    loaded = load(write(tmp_path / "b.json", benchmark_json([record], fullnames=["other"])))
    assert loaded.records == [record]


def test_complete_flag_is_kept_and_written():
    assert vram_json([], {})["complete"] is True
    assert vram_json([], {}, complete=False)["complete"] is False


def test_validate_record_names_where_and_the_key():
    with pytest.raises(HistoryError, match=r"^f.json: record 3: record.phases.step.oom should be true/false"):
        validate_record(rec("a", 1) | {"phases": {"step": rec("a", 1)["phases"]["step"] | {"oom": 1}}},
                        "f.json: record 3")
    with pytest.raises(HistoryError, match=r"record.phases.step.peak should be an integer, found bool"):
        validate_record(rec("a", 1) | {"phases": {"step": rec("a", 1)["phases"]["step"] | {"peak": True}}}, "x")


# --- writing ---

def test_written_files_honour_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        write_json_atomic(tmp_path / "out.json", VALID)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out.json").stat().st_mode) == 0o640


@pytest.mark.parametrize("failure", [TypeError, KeyboardInterrupt])
def test_no_temporary_file_is_left_when_writing_fails(tmp_path, monkeypatch, failure):
    (tmp_path / "out.json").write_text("previous")

    def broken(*args, **kwargs):
        raise failure("interrupted")

    monkeypatch.setattr(history.json, "dump", broken)
    with pytest.raises(failure):
        write_json_atomic(tmp_path / "out.json", VALID)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]
    assert (tmp_path / "out.json").read_text() == "previous"


def test_stale_temporary_files_of_a_killed_run_are_removed(tmp_path):
    stale = tmp_path / ".out.json.k1ll3d.tmp"
    stale.write_text("{")
    other = tmp_path / ".other.json.abc.tmp"
    other.write_text("{")
    write_json_atomic(tmp_path / "out.json", VALID)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.json.abc.tmp", "out.json"]


def test_cli_output_that_cannot_be_written_is_exit_2(tmp_path, capsys):
    shard = write(tmp_path / "a.json", VALID)
    (tmp_path / "blocker").write_text("a file, not a folder")
    assert main(["merge", str(shard), "-o", str(tmp_path / "blocker" / "m.json")]) == 2
    assert "pytest-vram: error:" in capsys.readouterr().err


# --- merge ---

def test_merge_tells_same_named_cases_apart_and_still_refuses_a_real_duplicate(tmp_path):
    forward, backward = rec("1", 1) | {"test": "t.py::test_forward[1]"}, rec("1", 1) | {"test": "t.py::test_backward[1]"}
    one = write(tmp_path / "one.json", VALID | {"records": [forward, backward]})
    doc, _ = merge([str(one)])
    assert [r["test"] for r in doc["records"]] == ["t.py::test_forward[1]", "t.py::test_backward[1]"]
    two = write(tmp_path / "two.json", VALID | {"records": [forward]})
    with pytest.raises(HistoryError, match=r"case 't.py::test_forward\[1\]' is in both .*one.json and .*two.json"):
        merge([str(one), str(two)])


def test_merging_an_incomplete_shard_gives_an_incomplete_file(tmp_path):
    one = write(tmp_path / "one.json", VALID)
    two = write(tmp_path / "two.json", VALID | {"records": [rec("b", 1)], "complete": False})
    doc, notes = merge([str(one), str(two)])
    assert doc["complete"] is False
    assert any(f"{two} is incomplete" in n for n in notes)
