"""The seed comparison page: every seed cell is a case of ours, and the committed page is what
the command makes from the committed baseline (no number typed by hand)."""
from pathlib import Path

from fixtures.cases import CASES
from fixtures.seed_comparison import SEED_CELLS, main, render

REPO = Path(__file__).resolve().parents[1]


def test_every_seed_cell_is_a_case():
    ids = {c.id for c in CASES}
    assert [case for _, case, _, _ in SEED_CELLS if case not in ids] == []


def test_committed_page_is_generated_from_the_committed_baseline(monkeypatch):
    monkeypatch.chdir(REPO)
    assert render("results/sim-v100.json") == (REPO / "docs" / "seed-comparison.md").read_text()


def test_a_bad_history_is_one_error(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert main([str(bad)]) == 2
    assert str(bad) in capsys.readouterr().err
