"""The suite as a user runs it on the cpu backend: full-size cases are collected and skipped
with the reason that says what would run them (their tiny twins run for real in tests/)."""
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # full-size suite in a subprocess


def test_cpu_backend_skips_full_size_cases_with_reason():
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "benchmarks", "-m", "v100", "--vram-backend=cpu", "-rs",
         "-p", "no:cacheprovider", "--benchmark-disable"],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    out = result.stdout
    assert result.returncode == 0, out[-4000:]
    assert "full-size case: the cpu backend runs only tiny models; run it on a CUDA GPU" in out
    assert " passed" not in out and " failed" not in out
