"""The seed comparison page: every seed cell is a case of ours, each cell's open choices are
hypotheses simulated into a committed history, and the committed page is what the command makes
from the committed files (no number typed by hand)."""
import json
from pathlib import Path

import pytest

from fixtures.cases import CASES
from fixtures.seed_comparison import SEED_CELLS, main, render
from fixtures.seed_hypotheses import HYPOTHESES, hypotheses, probes
from pytest_vram.history import load

REPO = Path(__file__).resolve().parents[1]
HYPOTHESES_JSON = "results/seed-hypotheses.json"


def test_every_seed_cell_is_a_case():
    ids = {c.id for c in CASES}
    assert [case for _, case, _, _ in SEED_CELLS if case not in ids] == []


def test_every_seed_cell_has_hypotheses_that_each_change_its_case():
    assert [cell for cell, _ in HYPOTHESES] == [case for _, case, _, _ in SEED_CELLS]
    for cell, _ in HYPOTHESES:
        cases = [case for _, case in hypotheses(cell)]
        assert cases and cell not in {c.id for c in cases} and len({c.id for c in cases}) == len(cases)


def test_the_committed_hypotheses_are_simulated_records_of_every_probe():
    history = load(REPO / HYPOTHESES_JSON)
    assert history.complete and {r["backend"] for r in history.records} == {"sim"}
    assert [r["case"] for r in history.records] == [c.id for c in probes()]
    assert all(isinstance(r["phases"]["creation"]["allocated"], int) for r in history.records)


def test_committed_page_is_generated_from_the_committed_files(monkeypatch):
    monkeypatch.chdir(REPO)
    assert render("results/sim-v100.json", HYPOTHESES_JSON) == (REPO / "docs" / "seed-comparison.md").read_text()


def test_each_hypothesis_row_is_labelled_and_measured_against_the_seed(monkeypatch):
    monkeypatch.chdir(REPO)
    page = render("results/sim-v100.json", HYPOTHESES_JSON)
    assert page.count("| hypothesis: ") == sum(len(h) for _, h in HYPOTHESES)
    assert "| hypothesis: batch size 2 | `sd15-lora-r4-fp32-bs2-512px` | " in page
    assert page.count("Nearest the seed's creation figure: ") == len(SEED_CELLS)


def test_a_missing_hypothesis_record_is_shown_as_not_simulated(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    data = json.loads((REPO / HYPOTHESES_JSON).read_text())
    data["records"] = data["records"][:1]
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps(data))
    assert "| hypothesis: batch size 4 | - | not simulated yet |" in render("results/sim-v100.json", str(partial))


@pytest.mark.parametrize("argv", [["{bad}", HYPOTHESES_JSON], ["results/sim-v100.json", "{bad}"]])
def test_a_bad_history_is_one_error(tmp_path, capsys, monkeypatch, argv):
    monkeypatch.chdir(REPO)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert main([a.format(bad=bad) for a in argv]) == 2
    assert str(bad) in capsys.readouterr().err


def test_the_command_takes_the_two_files(capsys):
    assert main(["results/sim-v100.json"]) == 2
    assert "usage: python -m fixtures.seed_comparison HISTORY.json HYPOTHESES.json" in capsys.readouterr().err


class FakeMeter:
    """What fixtures.seed_hypotheses.run reads of a simulation, without simulating."""

    def __init__(self):
        from pytest_vram.profiles import get_profile

        self.profile, self.oom_phase, self.peak_total = get_profile("v100"), None, 5 * 10**9


def test_the_search_prints_one_line_per_probe_and_ctrl_c_keeps_what_it_found(tmp_path, monkeypatch, capsys):
    import fixtures.fit
    from fixtures.seed_hypotheses import run

    calls = []

    def simulate(case):
        calls.append(case.id)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return FakeMeter()

    monkeypatch.setattr(fixtures.fit, "simulate", simulate)
    monkeypatch.setattr(fixtures.fit, "record_of", lambda case, meter: {"case": case.id, "test": f"t[{case.id}]"})
    out = tmp_path / "found.json"
    assert run(str(out)) == 130
    err = capsys.readouterr().err
    first, second = probes()[:2]
    assert f"[1/{len(probes())}] {first.id}: peak 5.000 GB (" in err and f"[2/{len(probes())}] {second.id}: " in err
    assert "interrupted: writing the 2 records found" in err
    written = json.loads(out.read_text())
    assert written["complete"] is False and [r["case"] for r in written["records"]] == [first.id, second.id]
