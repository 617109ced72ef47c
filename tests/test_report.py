"""The memory table adds up (largest phase, budget, breakdown to the peak it explains, leaks),
its Markdown pastes into a CI summary as it is, and the charts draw OOM as OOM."""
import json
import math

import pytest

from pytest_vram import plot, report
from pytest_vram.cli import main
from pytest_vram.history import History
from pytest_vram.profiles import PROFILES
from pytest_vram.sizes import GiB

pytest_plugins = ["pytester"]


def phase(total, breakdown=None, allocated=None, oom=False):
    breakdown = breakdown or {}
    peak = sum(breakdown.values()) or total
    return {"allocated": allocated if allocated is not None else peak, "peak": peak, "reserved": total,
            "context": 0, "total": total, "breakdown": breakdown, "oom": oom}


def record(case="c", phases=None, **extra):
    phases = phases or {"step": phase(GiB)}
    return {"case": case, "status": "fits", "phases": phases, "budget_bytes": 8 * GiB} | extra


def cells(rec, breakdown=False):
    return dict(zip(report.headers(breakdown), report.row(rec, breakdown)))


def test_the_largest_phase_is_shown_not_the_last():
    rec = record(phases={"creation": phase(1 * GiB), "forward": phase(4 * GiB), "backward": phase(2 * GiB)})
    row = cells(rec)
    assert row["after creation"] == "1.000 GiB"
    assert row["largest phase"] == "forward" and row["peak (reserved + context)"] == "4.000 GiB"
    assert row["% of budget"] == "50.0%"
    assert row["budget"] == "8.000 GiB"


def test_the_budget_names_the_gpu_profile_when_it_is_the_cards_memory():
    v100 = PROFILES["v100"]
    assert cells(record(gpu="v100", budget_bytes=v100.total_bytes))["budget"] == "15.782 GiB (v100)"
    assert cells(record(gpu="v100", budget_bytes=GiB))["budget"] == "1.000 GiB"
    assert cells(record(budget_bytes=None))["budget"] == "-"


def test_the_oom_phase_is_the_one_shown():
    rec = record(phases={"creation": phase(3 * GiB), "step": phase(2 * GiB, oom=True)}, oom_phase="step", status="OOM")
    row = cells(rec)
    assert row["largest phase"] == "step" and row["peak (reserved + context)"] == "OOM"


def test_the_breakdown_adds_up_to_the_peak_column():
    parts = {"frozen_weights": 2 * GiB, "activations": 1 * GiB}
    rec = record(phases={"step": phase(5 * GiB, parts)})
    row = cells(rec, breakdown=True)
    assert row["frozen_weights"] == "2.00 GiB" and row["activations"] == "1.00 GiB"
    assert row[report.CACHE_AND_CONTEXT] == "2.00 GiB"   # 5 - (2 + 1)
    shown = [float(row[h].split()[0]) for h in report.BREAKDOWN_HEADERS]
    assert sum(shown) == float(row["peak (reserved + context)"].split()[0])
    text = report.table([rec], breakdown=True)
    assert text.splitlines()[0] == report.BREAKDOWN_NOTE


def test_a_record_that_started_with_memory_held_is_flagged_as_a_leak():
    assert cells(record(baseline_bytes=int(1.2 * GiB)))["status"] == "fits, LEAK: 1.200 GiB held at start"
    assert cells(record(baseline_bytes=0))["status"] == "fits"


def test_a_record_without_status_is_a_clear_error_not_a_keyerror():
    with pytest.raises(ValueError, match=r"record 0 \(c\): record lacks 'status'"):
        report.table([{"case": "c", "phases": {}}])


def gfm_cells(line: str) -> list[str]:
    """The cells of a GFM table row: split on pipes that are not escaped."""
    out, cell, i = [], "", 1
    while i < len(line) - 1:
        if line[i] == "\\" and line[i + 1] == "|":
            cell, i = cell + "\\|", i + 2
            continue
        if line[i] == "|":
            out.append(cell.strip())
            cell = ""
        else:
            cell += line[i]
        i += 1
    return out + [cell.strip()]


def test_markdown_is_a_valid_gfm_table_to_paste_as_it_is(tmp_path, capsys):
    recs = [record("a|b", test="t.py::test[a|b]"), record("b", baseline_bytes=GiB)]
    path = tmp_path / "h.json"
    path.write_text(json.dumps({"format": "pytest-vram", "version": 1, "records": recs}))
    assert main(["table", str(path), "--format", "markdown", "--breakdown"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out
    lines = out.strip().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| case |"))
    assert lines[0].startswith("### ") and lines[start - 1] == ""   # a heading, then the table
    table = lines[start:]
    width = len(gfm_cells(table[0]))
    assert all(c in ("---", "---:") for c in gfm_cells(table[1])) and len(gfm_cells(table[1])) == width
    assert [len(gfm_cells(line)) for line in table[2:]] == [width, width]
    assert gfm_cells(table[2])[0] == "a\\|b"


def test_compare_markdown_lists_notes_and_regressions(tmp_path, capsys):
    old, new = tmp_path / "old.json", tmp_path / "new.json"
    old.write_text(json.dumps({"format": "pytest-vram", "version": 1, "records": [record("a"), record("b")]}))
    new.write_text(json.dumps({"format": "pytest-vram", "version": 1, "records": [record("a", phases={"step": phase(2 * GiB)})]}))
    assert main(["compare", str(old), str(new), "--format", "markdown", "--fail", "step.total:1%"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[:3] == [f"### `{old}` -> `{new}`", "", f"- case only in {old}: b"]
    assert "| case | metric | old | new | change (bytes) | change |" in out
    assert [line for line in out if line][-1].startswith("- REGRESSION a: step.total grew from 1.000 GiB to 2.000 GiB")


PHASES = """
import torch, pytest
@pytest.mark.vram_budget("1GiB")
def test_three(vram):
    with vram.phase("creation"):
        a = torch.zeros(2**10)
    with vram.phase("middle"):
        b = torch.zeros(2**22)
        del b
    with vram.phase("last"):
        c = torch.zeros(2**12)
"""


def test_the_terminal_table_shows_the_largest_phase_and_the_budget(pytester):
    pytester.makepyfile(test_p=PHASES)
    result = pytester.runpytest("--vram-backend=cpu")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*largest phase*budget*% of budget*",
                                 "test_three * middle * 0.016 GiB * 1.000 GiB * 1.6% *fits"])


# --- charts ---

def test_an_oom_case_is_drawn_as_oom_not_as_a_small_bar():
    fits = record("m-fits", phases={"step": phase(2 * GiB, {"activations": GiB})})
    oom = record("m-oom", phases={"step": phase(GiB // 10, oom=True)}, oom_phase="step", status="OOM")
    fig = plot._bars(plot._pyplot(), [fits, oom])
    ax = fig.axes[0]
    texts = [t.get_text() for t in ax.texts]
    assert texts == ["  OOM in step"]
    oom_bars = [p for p in ax.patches if p.get_hatch() == "xx"]
    assert len(oom_bars) == 1 and oom_bars[0].get_width() == pytest.approx(8.0)   # to the 8 GiB budget
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == ["m:", "m-fits", "m-oom"]   # one row per case, grouped by model


def test_the_trend_marks_an_oom_at_creation_as_oom_not_as_its_context():
    fits = record("a", phases={"creation": phase(GiB), "step": phase(3 * GiB)})
    died = record("a", phases={"creation": phase(GiB // 4, oom=True)}, oom_phase="creation", status="OOM")
    histories = [History("old.json", [fits], {}), History("new.json", [died], {})]
    fig = plot._trend(plot._pyplot(), histories)
    ax = fig.axes[0]
    line = next(line for line in ax.lines if line.get_label() == "a")
    ys = list(line.get_ydata())
    assert ys[0] == 3 and (ys[1] is None or math.isnan(ys[1]))
    assert [t.get_text() for t in ax.texts] == ["OOM"]
    mark = next(line for line in ax.lines if line.get_label().startswith("OOM"))
    assert list(mark.get_ydata()) == [8.0]   # at the budget


def test_model_groups_come_from_params_or_the_name():
    assert plot.model_of(record("llama-7b-lora", params={"case": {"model": "llama-7b"}})) == "llama-7b"
    assert plot.model_of(record("sd15-lora-r4")) == "sd15"


def test_the_table_tells_two_tests_with_one_display_name_apart(tmp_path, capsys):
    recs = [record("1", test="t.py::test_forward[1]"), record("1", test="t.py::test_backward[1]"),
            record("2", test="t.py::test_forward[2]")]
    assert [row[0] for row in report.rows(recs)] == ["test_forward[1]", "test_backward[1]", "2"]
    assert [line.split()[0] for line in report.table(recs).splitlines()[2:]] == ["test_forward[1]",
                                                                               "test_backward[1]", "2"]
