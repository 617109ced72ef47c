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
    assert "'warp_drive'" in message and "qlora_70b, fit_cold_start, matrix" in message
    assert not (tmp_path / "out.json").exists()


def test_an_unknown_case_field_names_it_and_the_fields():
    inprocess = load("inprocess")
    with pytest.raises(SystemExit) as raised:
        inprocess.main(["model=llama-2-70b", "quantisation=nf4-dq"])
    assert "'quantisation'" in str(raised.value) and "quantization" in str(raised.value)
