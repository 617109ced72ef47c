"""The suite split the ways CI splits it, against the committed serial baseline: shards joined
by ``pytest-vram merge``, and a case measured in its own process by --vram-isolate."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # the suite in subprocesses
BASELINE = json.loads((REPO / "results" / "sim-v100.json").read_text())
SUBSET = "sd15-lora-r4-fp32-bs1 or sd15-lora-r4-nf4-dq or sd15-lokr or llama-7b-none-fp16"


def suite(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pytest", "benchmarks", "-m", "v100", "--vram-backend=sim", "-q",
           "-p", "no:cacheprovider", "--benchmark-disable", *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)


def serial_records(cases: set[str]) -> list[dict]:
    return [r for r in BASELINE["records"] if r["case"] in cases]


def test_shards_merge_to_the_serial_records(tmp_path):
    shards = [tmp_path / f"shard{i}.json" for i in (1, 2)]
    for i, path in enumerate(shards, 1):
        result = suite("-k", SUBSET, f"--vram-shard={i}/2", f"--vram-json={path}")
        assert result.returncode == 0, result.stdout[-3000:]
    merged = tmp_path / "merged.json"
    cli = subprocess.run([sys.executable, "-m", "pytest_vram.cli", "merge", *map(str, shards), "-o", str(merged)],
                         capture_output=True, text=True)
    assert cli.returncode == 0, cli.stderr
    records = json.loads(merged.read_text())["records"]
    pieces = [json.loads(p.read_text())["records"] for p in shards]
    assert {r["case"] for r in pieces[0]}.isdisjoint(r["case"] for r in pieces[1])
    assert len(records) == 4 and records == serial_records({r["case"] for r in records})


def test_an_isolated_case_measures_what_it_measures_in_process(tmp_path):
    out = tmp_path / "isolated.json"
    result = suite("-k", "sd15-lora-r4-nf4-dq", "--vram-isolate", f"--vram-json={out}")
    assert result.returncode == 0, result.stdout[-3000:]
    (record,) = json.loads(out.read_text())["records"]
    assert [record] == serial_records({"sd15-lora-r4-nf4-dq-bs1-512px"})
