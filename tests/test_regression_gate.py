"""CI gates itself: the suite, simulated for a V100, against the committed baseline history
(results/sim-v100.json, measured serially with the versions in constraints.txt). The simulator
is deterministic, so any growth past GATE is a real change in what the suite or its libraries
allocate. Update the baseline with the command in results/README.md when a change is intended.

The gated run uses two xdist workers: the records it merges must be the serial baseline's,
record for record.
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


@pytest.fixture(scope="module")
def parallel_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("parallel") / "vram.json"
    result = run_suite(BASELINE, "-n", "2", f"--vram-json={out}")
    return result, json.loads(out.read_text()) if out.exists() else None


def test_suite_does_not_regress_against_the_committed_baseline(parallel_run):
    result, _ = parallel_run
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "GPU memory compared" in result.stdout
    assert "REGRESSION" not in result.stdout


def test_two_xdist_workers_give_the_serial_records(parallel_run):
    _, parallel = parallel_run
    serial = json.loads(BASELINE.read_text())
    assert parallel["order"] == serial["order"]
    assert [r["case"] for r in parallel["records"]] == [r["case"] for r in serial["records"]]
    assert parallel["records"] == serial["records"]
    assert sorted(parallel["machine_info"]["xdist_workers"]) == ["gw0", "gw1"]


def test_no_case_starts_with_memory_left_by_an_earlier_one():
    """The serial baseline runs its expected OOMs between other cases: nothing survives them."""
    records = json.loads(BASELINE.read_text())["records"]
    assert any(r["status"] == "OOM" for r in records[:-1])
    assert {r["case"]: r["baseline_bytes"] for r in records} == {r["case"]: 0 for r in records}


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
