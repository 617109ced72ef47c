"""The speed benchmark's command line (benchmarks/speed): a bad section or Case field is one
clear error naming it and the valid choices, before anything is timed."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SPEED = Path(__file__).resolve().parents[1] / "benchmarks" / "speed"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"speed_{name}", SPEED / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_an_unknown_section_names_it_and_the_sections(tmp_path):
    run = load("run")
    with pytest.raises(SystemExit) as raised:
        run.main(["--only", "qlora_70b,warp_drive", "-o", str(tmp_path / "out.json")])
    message = str(raised.value)
    assert "'warp_drive'" in message and "qlora_70b, fit_cold_start, fit_max_seq_len, matrix" in message
    assert not (tmp_path / "out.json").exists()


def test_an_unknown_case_field_names_it_and_the_fields():
    inprocess = load("inprocess")
    with pytest.raises(SystemExit) as raised:
        inprocess.main(["model=llama-2-70b", "quantisation=nf4-dq"])
    assert "'quantisation'" in str(raised.value) and "quantization" in str(raised.value)


def test_an_unknown_commit_names_it_before_anything_runs(tmp_path):
    commits = load("commits")
    with pytest.raises(SystemExit) as raised:
        commits.main(["HEAD", "no-such-commit-xyz", "-o", str(tmp_path / "out.json")])
    assert "'no-such-commit-xyz'" in str(raised.value) and "a commit of this repository" in str(raised.value)
    assert not (tmp_path / "out.json").exists()


@pytest.mark.slow
def test_a_search_is_timed_with_its_probes_and_answer():
    """The fit_max_seq_len section's runner, on the tiny model: a fresh process, ~13 probes."""
    run = load("run")
    got = run.fit_search(["fit", "llama-tiny", "--seq-len", "64", "--budget", "400MiB", "--max-seq-len"], 1)
    assert got["probes"] == len(got["probe_lines"]) >= 2 and len(got["runs_s"]) == 1
    assert all(line.startswith("probe seq_len=") for line in got["probe_lines"])
    assert got["answer"].startswith("largest seq_len that fits: ")
    assert any(line.startswith(f"probe seq_len={got['answer'].rsplit(' ', 1)[1]}: fits ")
               for line in got["probe_lines"])
