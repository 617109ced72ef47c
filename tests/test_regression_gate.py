"""CI gates itself: the suite, simulated for a V100, against the committed baseline history
(results/sim-v100.json, measured with the versions in constraints.txt). The simulator is
deterministic, so any growth past GATE is a real change in what the suite or its libraries
allocate. Update the baseline with the command in results/README.md when a change is intended.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BASELINE = REPO / "results" / "sim-v100.json"
GATE = ["*.peak:1%", "*.total:1%", "*.allocated:1%"]


def run_suite(baseline: Path, *extra: str) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "pytest", "benchmarks", "-m", "v100", "--vram-backend=sim",
            "-p", "no:cacheprovider", "--benchmark-disable", f"--vram-compare={baseline}", *extra]
    for expr in GATE:
        args.append(f"--vram-compare-fail={expr}")
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600)


def test_suite_does_not_regress_against_the_committed_baseline():
    result = run_suite(BASELINE)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "GPU memory compared" in result.stdout
    assert "REGRESSION" not in result.stdout


@pytest.mark.parametrize("growth", [1.10])
def test_gate_fails_on_an_injected_regression(tmp_path, growth):
    data = json.loads(BASELINE.read_text())
    for record in data["records"]:
        for phase in record["phases"].values():
            phase["peak"] = int(phase["peak"] / growth)   # this run now looks `growth` times bigger
    baseline = tmp_path / "baseline.json"
    baseline.write_text(json.dumps(data))
    result = run_suite(baseline, "-k", "llama-7b-lora-r8-nf4-dq-gc-bs1")
    assert result.returncode == 1, result.stdout[-4000:]
    assert "REGRESSION llama-7b-lora-r8-nf4-dq-gc-bs1-seq512: step.peak grew" in result.stdout
    assert "past *.peak:1%" in result.stdout
