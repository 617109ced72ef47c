"""The README's figures come from committed runs: its V100 table is what
`pytest-vram table results/sim-v100.json --format markdown` prints, and its error range is
docs/accuracy.md's."""
import re
from pathlib import Path

from pytest_vram import cli

REPO = Path(__file__).resolve().parents[1]


def test_readme_table_is_the_committed_baselines(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    assert cli.main(["table", "results/sim-v100.json", "--format", "markdown"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("|")]
    readme = (REPO / "README.md").read_text()
    start = readme.index(rows[0])
    assert readme[start:].splitlines()[:len(rows)] == rows


def test_readme_error_range_is_the_accuracy_pages():
    page = (REPO / "docs" / "accuracy.md").read_text()
    low, high = re.search(r"fully published setup replayed: errors from (\S+) to (\S+),", page).groups()
    assert f"**{low} to {high.rstrip(',')}**" in (REPO / "README.md").read_text()
