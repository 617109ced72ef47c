"""The frontier (fixtures/frontier.py, fixtures/frontier_page.py): the committed page is what
the command makes from the committed run; every figure in that run is a simulated record that
fits below the budget, beside the record of the next step, which did not; the run keeps its
finished cells when interrupted and finishes the rest with --resume."""
import json
from pathlib import Path

import pytest

from fixtures import frontier
from fixtures.frontier import LLAMAS, RECIPES, cell_key
from fixtures.frontier_page import error_range, main as page_main, render

REPO = Path(__file__).resolve().parents[1]
RUN = REPO / "results" / "frontier.json"


def committed() -> dict:
    return json.loads(RUN.read_text())


def test_committed_page_is_generated_from_the_committed_run(monkeypatch):
    monkeypatch.chdir(REPO)
    assert render("results/frontier.json") == (REPO / "docs" / "frontier.md").read_text()


def test_the_committed_run_answers_every_question():
    doc = committed()
    assert doc["complete"] and doc["missing"] == [] and doc["wall_s"] > 0
    keys = {c["key"] for c in doc["cells"]}
    for recipe in RECIPES:
        top = next(c for c in doc["cells"] if c["key"] == cell_key("llm", recipe.name, "largest_model"))
        for model in top["fitting"]:
            assert {cell_key("llm", recipe.name, q, model) for q in ("max_seq_len", "max_batch_size")} <= keys
        # the larger models are not tried past the first that fails: the peak grows with the model
        peaks = [next(c for c in doc["cells"] if c["key"] == cell_key("llm", recipe.name, "max_seq_len", m))
                 ["start"]["peak_total_bytes"] for m in top["fitting"]]
        assert peaks == sorted(peaks) and len(set(peaks)) == len(peaks)
        assert top["fitting"] == list(LLAMAS[:len(top["fitting"])])
        for model, _ in frontier.DIFFUSION:
            assert {cell_key("diffusion", recipe.name, q, model) for q in ("max_resolution", "max_batch_size")} <= keys


def check_cell(cell: dict, budget: int) -> None:
    """A figure is the record of a fit below the budget; the next step is a record that did not fit."""
    fit, nxt = cell["fit"], cell["next"]
    if cell["value"] is not None:
        assert fit["status"] == "fits" and fit["oom_phase"] is None, cell["key"]
        assert 0 < fit["peak_total_bytes"] <= fit["budget_bytes"] == budget, cell["key"]
        assert fit["params"]["case"][cell["field"]] == cell["value"], cell["key"]
    assert nxt is not None and nxt["status"] == "OOM" and nxt["oom_phase"], cell["key"]
    assert nxt["params"]["case"][cell["field"]] == cell["next_value"], cell["key"]
    if cell["field"] == "model":
        order = list(LLAMAS)
        assert cell["value"] is None or order.index(cell["next_value"]) == order.index(cell["value"]) + 1
    elif cell["value"] is not None:  # the next step at the solver's granularity: nothing in between
        assert cell["next_value"] == cell["value"] + frontier.STEPS[cell["field"]], cell["key"]


def test_every_committed_figure_is_a_fit_beside_a_next_step_that_did_not_fit():
    doc = committed()
    assert doc["cells"]
    for cell in doc["cells"]:
        check_cell(cell, doc["budget_bytes"])


def test_each_peak_is_shown_with_the_accuracy_pages_error_range():
    lo, hi, anchors = error_range(str(REPO / "results" / "validation.json"))
    summary = (REPO / "docs" / "accuracy.md").read_text()
    assert f"{anchors} anchors with a fully published setup replayed: errors from {lo:+.1f}% to {hi:+.1f}%" in summary
    page = (REPO / "docs" / "frontier.md").read_text()
    assert f"from {lo:+.1f}% to {hi:+.1f}%" in page


def test_a_bad_run_file_is_one_error(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"records": []}')
    assert page_main([str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "not a frontier run" in err
    assert frontier.main(["--gpu", "nope", "-o", str(tmp_path / "x.json")]) == 2
    assert "'nope'" in capsys.readouterr().err


@pytest.fixture
def tiny(monkeypatch):
    """The frontier over the tiny LLaMA alone, one recipe, no diffusion, a 360 MiB budget (its
    peak at batch 1 and 512 tokens, mostly the CUDA context, is 0.32 GiB)."""
    monkeypatch.setattr(frontier, "LLAMAS", ("llama-tiny",))
    monkeypatch.setattr(frontier, "DIFFUSION", ())
    monkeypatch.setattr(frontier, "RECIPES", RECIPES[:1])


@pytest.mark.slow
def test_an_interrupted_run_keeps_its_cells_and_resume_finishes_it(tiny, tmp_path, monkeypatch):
    out = tmp_path / "frontier.json"
    args = ["--gpu", "v100", "--budget", "360MiB", "-o", str(out)]
    searched = []
    real_search = frontier.Frontier.search

    def interrupted_search(self, prober, family, recipe, field, question):
        if searched:  # Ctrl-C during the second search
            raise KeyboardInterrupt
        searched.append(question)
        real_search(self, prober, family, recipe, field, question)

    monkeypatch.setattr(frontier.Frontier, "search", interrupted_search)
    assert frontier.main(args) == 130
    doc = json.loads(out.read_text())
    name = RECIPES[0].name
    assert [c["key"] for c in doc["cells"]] == [cell_key("llm", name, "max_seq_len", "llama-tiny")]
    assert not doc["complete"] and doc["missing"] == [cell_key("llm", name, "largest_model")]
    first = doc["cells"][0]

    monkeypatch.setattr(frontier.Frontier, "search", real_search)
    assert frontier.main(args + ["--resume"]) == 0
    doc = json.loads(out.read_text())
    assert doc["complete"] and doc["missing"] == [] and len(doc["runs"]) == 2
    cells = {c["key"]: c for c in doc["cells"]}
    assert cells[first["key"]] == first  # kept, not searched again
    assert set(cells) == {first["key"], cell_key("llm", name, "max_batch_size", "llama-tiny"),
                          cell_key("llm", name, "largest_model")}
    top = cells[cell_key("llm", name, "largest_model")]
    assert top["value"] == "llama-tiny" and top["next"] is None  # the only model fits
    for cell in doc["cells"]:
        if cell["field"] != "model":
            check_cell(cell, 360 << 20)


def test_a_recorded_probe_is_the_record_of_a_fresh_simulation():
    """The frontier's figures come from probes that fork after one build; each record must be
    the record a fresh run of that value writes (pytest-vram fit --json's)."""
    from fixtures.cases import Case
    from fixtures.fit import record_of, simulate

    case = Case("llama-tiny", "lora", "fp16", seq_len=64)
    limit = 360 << 20
    prober = frontier.RecordingProber(case, limit)
    try:
        probed = {seq: prober("seq_len", seq) for seq in (64, 1 << 16)}
        again = prober("seq_len", 64)
    finally:
        prober.finish()
    assert again == probed[64]  # kept, not simulated twice
    assert probed[64]["status"] == "fits" and probed[1 << 16]["status"] == "OOM"
    for seq, result in probed.items():
        variant = Case("llama-tiny", "lora", "fp16", seq_len=seq)
        fresh = record_of(variant, simulate(variant, limit))
        assert {k: v for k, v in result.items() if k != "peak_total"} == fresh
