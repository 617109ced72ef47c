"""Records and the --vram-json file as a user relies on them: checked writable before any test
runs, never a complete history replaced by an interrupted run's, a record for every measured
test (also one failing outside a phase), and stable JSON-native parameters."""
import json
import os

import pytest

pytest_plugins = ["pytester"]

TWO_CASES = """
import torch, pytest

def test_one(vram):
    with vram.phase("step"):
        x = torch.zeros(256)

def test_two(vram):
    with vram.phase("step"):
        x = torch.zeros(512)
    {after}
"""


def run(pytester, *args):
    # no_reraise_ctrlc: an inner run's KeyboardInterrupt ends that run, not this one
    return pytester.runpytest("-p", "no:cacheprovider", "--vram-backend=cpu", *args, no_reraise_ctrlc=True)


def doc(path):
    return json.loads(path.read_text())


@pytest.mark.parametrize("make_target, message", [
    (lambda root: (root / "out").mkdir() or root / "out", "--vram-json=*out: is a directory*"),
    (lambda root: (root / "file").write_text("x") and root / "file" / "v.json",
     "--vram-json=*file/v.json: cannot create the file: *file is not a directory"),
])
def test_unwritable_vram_json_is_one_usage_error_before_any_test_runs(pytester, make_target, message):
    pytester.makepyfile(test_two=TWO_CASES.format(after=""))
    target = make_target(pytester.path)
    result = run(pytester, f"--vram-json={target}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: {message}"])
    assert "passed" not in result.stdout.str() and "Traceback" not in result.stderr.str()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_for_vram_json_is_one_usage_error(pytester):
    pytester.makepyfile(test_two=TWO_CASES.format(after=""))
    folder = pytester.path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        result = run(pytester, f"--vram-json={folder / 'v.json'}")
    finally:
        folder.chmod(0o755)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --vram-json=*ro/v.json: cannot write in *ro: Permission denied"])


def test_a_missing_folder_for_vram_json_is_created(pytester):
    pytester.makepyfile(test_two=TWO_CASES.format(after=""))
    run(pytester, "--vram-json=new/deeper/v.json").assert_outcomes(passed=2)
    assert doc(pytester.path / "new" / "deeper" / "v.json")["complete"] is True


def test_an_interrupted_session_leaves_a_complete_history_untouched(pytester):
    pytester.makepyfile(test_two=TWO_CASES.format(after=""))
    run(pytester, "--vram-json=v.json").assert_outcomes(passed=2)
    saved = (pytester.path / "v.json").read_text()
    assert len(json.loads(saved)["records"]) == 2 and json.loads(saved)["complete"] is True
    pytester.makepyfile(test_two=TWO_CASES.format(after="raise KeyboardInterrupt"))
    result = run(pytester, "--vram-json=v.json")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    assert (pytester.path / "v.json").read_text() == saved
    result.stdout.fnmatch_lines(["vram: the session was interrupted: v.json was left as it was*"])
    assert not [p.name for p in pytester.path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("after, stop, cases", [
    ("raise KeyboardInterrupt", [], ["test_one"]),   # Ctrl-C during test_two
    ("assert False", ["-x"], ["test_one", "test_two"]),  # stopped at the first failure
])
def test_an_interrupted_session_without_a_history_writes_one_marked_incomplete(pytester, after, stop, cases):
    pytester.makepyfile(test_two=TWO_CASES.format(after=after),
                        test_z_never_runs="def test_z(vram):\n    pass\n")
    run(pytester, "--vram-json=v.json", *stop)
    written = doc(pytester.path / "v.json")
    assert written["complete"] is False
    assert [r["case"] for r in written["records"]] == cases


def test_a_test_failing_after_its_last_phase_keeps_its_record(pytester):
    pytester.makepyfile(test_two=TWO_CASES.format(after="assert x.sum() == 1, 'checked after the step'"))
    result = run(pytester, "--vram-json=v.json")
    result.assert_outcomes(passed=1, failed=1)
    one, two = doc(pytester.path / "v.json")["records"]
    assert two["case"] == "test_two" and two["phases"]["step"]["peak"] == 2048
    result.stdout.fnmatch_lines(["*test_two*0.000 GiB*fits"])


PARAMS = """
import dataclasses, pytest

def gpt2():
    pass

class Opaque:
    pass

@dataclasses.dataclass
class Cfg:
    layers: int
    act: object

@pytest.mark.parametrize("model", [gpt2])
@pytest.mark.parametrize("obj, n, cfg", [(Opaque(), 3, Cfg(2, gpt2))], ids=["custom"])
@pytest.mark.parametrize("native", [{"a": [1, 2.5, None, True]}])
def test_p(vram, model, obj, n, cfg, native):
    pass

@pytest.mark.parametrize("only", [Opaque()], ids=["opaque-id"])
def test_q(vram, only):
    pass
"""


def test_params_are_stable_json_native_values_or_pytest_ids(pytester):
    pytester.makepyfile(test_p=PARAMS)
    run(pytester, "--vram-json=a.json").assert_outcomes(passed=2)
    run(pytester, "--vram-json=b.json").assert_outcomes(passed=2)
    first, second = doc(pytester.path / "a.json"), doc(pytester.path / "b.json")
    assert first["records"] == second["records"]
    p, q = first["records"]
    assert p["params"] == {"native": {"a": [1, 2.5, None, True]}, "obj": "obj0", "n": 3,
                           "cfg": {"layers": 2, "act": "gpt2"}, "model": "gpt2"}
    assert q["params"] == {"only": "opaque-id"}
    assert " at 0x" not in json.dumps(first)
