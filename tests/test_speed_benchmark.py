"""The speed benchmark's pieces (benchmarks/speed) measure what they say: the in-process run is
the fixture's run (same record), and the MemTracker patch is what lets torch's tracker take a
PEFT model at all. No durations are asserted here."""
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks" / "speed"))

from inprocess import case_by_id, run_in_process  # noqa: E402
from memtracker import PeftMemTracker, step_under_memtracker  # noqa: E402

from fixtures.cases import Case  # noqa: E402

TINY_LORA = Case("llama-tiny", "lora", "fp32", seq_len=64)


def test_an_unknown_case_id_is_one_clear_error():
    with pytest.raises(ValueError, match=r"unknown case 'nope'; valid choices: llama-7b-none-fp16"):
        case_by_id("nope")


def test_memtracker_refuses_a_peft_model_and_the_patched_one_measures_it(monkeypatch):
    import memtracker
    from torch.distributed._tools.mem_tracker import MemTracker

    monkeypatch.setattr(memtracker, "PeftMemTracker", MemTracker)
    with pytest.raises(RuntimeError, match="doesn't require gradient"):
        step_under_memtracker(TINY_LORA)
    monkeypatch.setattr(memtracker, "PeftMemTracker", PeftMemTracker)
    _, peak = step_under_memtracker(TINY_LORA)
    assert peak > 0


@pytest.mark.slow
def test_the_in_process_run_gives_the_committed_record():
    case = case_by_id("llama-7b-lora-r8-nf4-dq-gc-bs1-seq512")
    records = json.loads((REPO / "results" / "sim-v100.json").read_text())["records"]
    committed = next(r for r in records if r["test"].endswith(f"[{case.id}]"))
    _, _, phases = run_in_process(case)
    assert phases == committed["phases"]
