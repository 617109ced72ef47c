"""Comparing histories: expressions, the pytest gate, the pytest-vram command, bad files."""
import json
import re

import pytest

from pytest_vram.cli import main
from pytest_vram.compare import compare, parse_fail_expr
from helpers import history, rec

pytest_plugins = ["pytester"]


def test_expressions_by_percent_and_size():
    assert parse_fail_expr("step.peak:5%").exceeded(100, 106)
    assert not parse_fail_expr("step.peak:5%").exceeded(100, 105)
    assert parse_fail_expr("creation.allocated:1KiB").exceeded(0, 1025)
    with pytest.raises(ValueError, match="malformed regression expression 'peak'"):
        parse_fail_expr("peak")
    with pytest.raises(ValueError, match="malformed size '5 parsecs'"):
        parse_fail_expr("step.peak:5 parsecs")


def test_regressions_improvements_missing_cases_and_status_changes():
    old = [rec("a", 1000), rec("b", 1000), rec("gone", 1)]
    new = [rec("a", 1200), rec("b", 800, status="OOM"), rec("fresh", 1)]
    result = compare(old, new, {"backend": "sim"}, {"backend": "cuda"})
    assert result.only_old == ["gone"] and result.only_new == ["fresh"]
    assert result.status_changes == [("b", "fits", "OOM")]
    assert result.warnings == ["backend differs: 'sim' vs 'cuda'"]
    found = result.regressions([parse_fail_expr("step.peak:10%")])
    assert found[0] == "b: was fits, now OOM"
    assert any(line.startswith("a: step.peak grew") for line in found)
    assert not any(line.startswith("b: step.peak") for line in found)   # 800 < 1000: improved


GROWING = """
import torch, pytest
@pytest.mark.vram_budget("1GiB")
def test_case(vram):
    with vram.phase("step"):
        x = torch.zeros({n})
"""


def test_pytest_gate_fails_the_session_on_regression(pytester):
    pytester.makepyfile(test_g=GROWING.format(n=1000))
    pytester.runpytest("--vram-backend=cpu", "--vram-json=old.json").assert_outcomes(passed=1)
    pytester.makepyfile(test_g=GROWING.format(n=1200))
    result = pytester.runpytest("--vram-backend=cpu", "--vram-compare=old.json", "--vram-compare-fail=step.peak:5%")
    result.assert_outcomes(passed=1)
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*GPU memory compared*", "*test_case*step.peak*+800*",
                                 "REGRESSION test_case: step.peak grew * past step.peak:5%"])
    ok = pytester.runpytest("--vram-backend=cpu", "--vram-compare=old.json", "--vram-compare-fail=step.peak:25%")
    assert ok.ret == 0


@pytest.mark.parametrize("content, message", [
    (None, "no such file"), ("", "the file is empty"), ('{"format": "pytest-vram", "ver', "not valid JSON"),
    ('{"hello": 1}', "neither a pytest-vram --vram-json file nor a pytest-benchmark JSON"),
    ('{"format": "pytest-vram", "version": 99, "records": []}', "version 99"),
])
def test_bad_history_gets_one_clear_error_and_exit_2(tmp_path, capsys, content, message):
    path = tmp_path / "h.json"
    if content is not None:
        path.write_text(content)
    assert main(["table", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and message in err


def test_cli_compare_formats_and_fail(tmp_path, capsys):
    a = history(tmp_path / "a.json", [rec("a", 1000)])
    b = history(tmp_path / "b.json", [rec("a", 1100)])
    assert main(["compare", str(a), str(b), "--format", "markdown"]) == 0
    assert "| a | step.peak |" in capsys.readouterr().out
    assert main(["compare", str(a), str(b), "--format", "csv", "--fail", "step.peak:5%"]) == 1
    out = capsys.readouterr().out
    assert "a,step.peak," in out and "REGRESSION a: step.peak grew" in out


def test_cli_plot_writes_png_for_one_history_and_a_trend(tmp_path, capsys):
    a = history(tmp_path / "a.json", [rec("a", 2**30), rec("b", 2**29)])
    b = history(tmp_path / "b.json", [rec("a", 2**31)])
    for sources, name in (([a], "one.png"), ([a, b], "trend.png")):
        out = tmp_path / name
        assert main(["plot", *map(str, sources), "-o", str(out)]) == 0
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- A case is its node id: two tests sharing a display name are two cases (issue 13) ---

def named(case, test, peak, status="fits"):
    return rec(case, peak, status) | {"test": test}


FORWARD, BACKWARD = "test_m.py::test_forward[1]", "test_m.py::test_backward[1]"


def test_two_tests_sharing_a_display_name_are_compared_separately():
    old = [named("1", FORWARD, 1000), named("1", BACKWARD, 1000)]
    new = [named("1", FORWARD, 10_000), named("1", BACKWARD, 1000)]
    result = compare(old, new)
    assert {d.test for d in result.deltas} == {FORWARD, BACKWARD}
    found = result.regressions([parse_fail_expr("*.allocated:1%")])
    assert found == ["test_forward[1]: step.allocated grew from 0.000 GiB to 0.000 GiB, +4500 bytes "
                     "(+900.0%) past *.allocated:1%"]


def test_cli_gate_trips_on_growth_of_one_of_two_same_named_cases(tmp_path, capsys):
    a = history(tmp_path / "a.json", [named("1", FORWARD, 1000), named("1", BACKWARD, 1000)])
    b = history(tmp_path / "b.json", [named("1", FORWARD, 10_000), named("1", BACKWARD, 1000)])
    assert main(["compare", str(a), str(b), "--fail", "*.allocated:1%"]) == 1
    out = capsys.readouterr().out
    assert "REGRESSION test_forward[1]: step.allocated grew" in out
    assert "test_backward[1]" not in out.split("REGRESSION", 1)[1]


def test_an_older_history_without_node_ids_still_compares_by_display_name(tmp_path, capsys):
    old = history(tmp_path / "old.json", [rec("a", 1000)])
    new = history(tmp_path / "new.json", [named("a", "t.py::test[a]", 2000)])
    assert main(["compare", str(old), str(new), "--fail", "step.peak:5%"]) == 1
    out = capsys.readouterr().out
    assert "cases matched by display name" in out and "REGRESSION a: step.peak grew" in out


def test_pytest_gate_tells_same_named_parametrized_tests_apart(pytester):
    source = """
import torch, pytest
@pytest.mark.parametrize("n", [1])
def test_forward(vram, n):
    with vram.phase("step"):
        x = torch.zeros({forward})
@pytest.mark.parametrize("n", [1])
def test_backward(vram, n):
    with vram.phase("step"):
        x = torch.zeros(1000)
"""
    pytester.makepyfile(test_m=source.format(forward=1000))
    pytester.runpytest("--vram-backend=cpu", "--vram-json=old.json").assert_outcomes(passed=2)
    pytester.makepyfile(test_m=source.format(forward=10_000))
    result = pytester.runpytest("--vram-backend=cpu", "--vram-compare=old.json",
                                "--vram-compare-fail=*.allocated:1%")
    assert result.ret == 1
    result.stdout.fnmatch_lines(["REGRESSION test_forward[[]1[]]: step.allocated grew *"])
    assert main(["merge", str(pytester.path / "old.json"), "-o", str(pytester.path / "m.json")]) == 0


# --- Gate expressions cannot be disabled (or always tripped) by a typo ---

@pytest.mark.parametrize("expr, message", [
    ("step.peak:nan%", "'step.peak:nan%' can never trip: a percentage must be a finite number above 0"),
    ("step.peak:inf%", "can never trip"),
    ("step.peak:-5%", "'step.peak:-5%' always trips (an unchanged run would regress)"),
    ("step.peak:0%", "always trips"),
    ("step.peak:0GiB", "'step.peak:0GiB' always trips (an unchanged run would regress): a size limit must be above 0"),
    ("step.peak:" + "9" * 400 + "GiB", "larger than 18446744073709551616 bytes"),
    ("step.nosuchfield:5%", "unknown field 'nosuchfield' in 'step.nosuchfield:5%'; valid choices: allocated, peak"),
    ("step.breakdown:5%", "unknown field 'breakdown'"),
])
def test_a_limit_that_cannot_work_is_a_usage_error(expr, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_fail_expr(expr)


def test_a_phase_that_ran_out_of_memory_is_not_compared_its_status_change_is_the_regression():
    old = [rec("a", 8000)]
    new = [rec("a", 100, status="OOM")]   # ran out of memory early: its numbers are partial
    result = compare(old, new)
    assert result.deltas == []
    assert result.regressions([parse_fail_expr("step.peak:5%")])[0] == "a: was fits, now OOM"


def test_an_unknown_phase_names_the_phases_of_the_histories(tmp_path, capsys):
    a = history(tmp_path / "a.json", [rec("a", 1000)])
    assert main(["compare", str(a), str(a), "--fail", "nosuchphase.peak:5%"]) == 2
    assert ("phase 'nosuchphase' in 'nosuchphase.peak:5%': phases in these histories: step"
            in capsys.readouterr().err)


def test_an_expression_that_matched_no_case_fails_loudly(tmp_path, capsys):
    """reserved is None on a backend without a caching allocator: nothing to compare."""
    a = history(tmp_path / "a.json", [rec("a", 1000)])
    assert main(["compare", str(a), str(a), "--fail", "step.reserved:5%"]) == 1
    assert "REGRESSION step.reserved:5% matched no case" in capsys.readouterr().out
    assert main(["compare", str(a), str(a), "--fail", "*.peak:5%"]) == 0


@pytest.mark.parametrize("expr, message", [
    ("nosuchphase.peak:5%", "phase 'nosuchphase' in 'nosuchphase.peak:5%': phases in these histories: step"),
    ("step.peak:nan%", "can never trip"),
    ("step.peak:-5%", "always trips"),
])
def test_pytest_gate_refuses_a_bad_expression_before_running(pytester, expr, message):
    pytester.makepyfile(test_g=GROWING.format(n=1000))
    pytester.runpytest("--vram-backend=cpu", "--vram-json=old.json").assert_outcomes(passed=1)
    result = pytester.runpytest("--vram-backend=cpu", "--vram-compare=old.json", f"--vram-compare-fail={expr}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert message in result.stderr.str()
    assert "test_g.py" not in result.stdout.str()   # refused before any test ran


def test_pytest_gate_refuses_an_incomplete_baseline(pytester):
    pytester.makepyfile(test_g=GROWING.format(n=1000))
    pytester.runpytest("--vram-backend=cpu", "--vram-json=old.json").assert_outcomes(passed=1)
    doc = json.loads((pytester.path / "old.json").read_text())
    (pytester.path / "old.json").write_text(json.dumps(doc | {"complete": False}))
    result = pytester.runpytest("--vram-backend=cpu", "--vram-compare=old.json")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "old.json: an incomplete history" in result.stderr.str()


def test_table_and_compare_warn_about_an_incomplete_history(tmp_path, capsys):
    a = tmp_path / "a.json"
    a.write_text(json.dumps({"format": "pytest-vram", "version": 1, "complete": False, "records": [rec("a", 1)]}))
    assert main(["table", str(a)]) == 0
    assert f"warning: {a} is incomplete" in capsys.readouterr().out
    assert main(["compare", str(a), str(a)]) == 0
    assert capsys.readouterr().out.count(f"warning: {a} is incomplete") == 2


def test_a_phase_out_of_memory_in_both_that_moved_is_said_not_gated(tmp_path, capsys):
    """Both runs ran out of memory in the phase: not a regression either way, but the figures it
    reached moved, and the compare says so instead of "no memory changes" (a simulator change
    moved one such record unseen before)."""
    old = [rec("a", 8000, status="OOM"), rec("b", 100)]
    new = [rec("a", 7000, status="OOM"), rec("b", 100)]
    result = compare(old, new)
    assert result.deltas and all(d.change == 0 for d in result.deltas)   # b, unchanged
    assert [d.metric for d in result.oom_moves] == ["step.allocated", "step.peak", "step.total"]
    assert result.regressions([parse_fail_expr("step.peak:5%")]) == []
    assert "out of memory in both, not compared: a: step.peak at the failure from" in "\n".join(result.notes("o", "n"))
    assert main(["compare", str(history(tmp_path / "o.json", old)), str(history(tmp_path / "n.json", new))]) == 0
    out = capsys.readouterr().out
    assert "no memory changes\n" not in out and "where both ran out of memory the figures moved" in out
    same = history(tmp_path / "same.json", old)
    assert main(["compare", str(same), str(same)]) == 0
    assert capsys.readouterr().out.rstrip().endswith("no memory changes")
