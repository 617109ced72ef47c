"""Comparing histories: expressions, the pytest gate, the pytest-vram command, bad files."""
import json

import pytest

from pytest_vram.cli import main
from pytest_vram.compare import compare, parse_fail_expr

pytest_plugins = ["pytester"]


def rec(case, peak, status="fits"):
    phase = {"allocated": peak // 2, "peak": peak, "reserved": None, "context": 0, "total": peak,
             "breakdown": {}, "oom": status == "OOM"}
    return {"case": case, "status": status, "phases": {"step": phase}}


def history(path, records, machine=None):
    path.write_text(json.dumps({"format": "pytest-vram", "version": 1,
                                "machine_info": machine or {"backend": "sim"}, "records": records}))
    return path


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
