"""The suite as a user runs it on the cpu backend: tiny cases measured for real and tabled,
full-size cases collected and skipped with the reason that says what would run them."""
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_cpu_backend_runs_tiny_cases_and_skips_full_size_with_reason():
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "benchmarks", "-m", "v100", "--vram-backend=cpu", "-rs",
         "-p", "no:cacheprovider", "--benchmark-disable"],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    out = result.stdout
    assert result.returncode == 0, out[-4000:]
    assert "full-size case: the cpu backend runs only tiny models; run it on a CUDA GPU" in out
    assert "GPU memory (cpu backend)" in out
    table = out.split("GPU memory (cpu backend)")[1]
    assert "llama-tiny-lora-r8-fp32-bs1-seq64" in table and "sd15-tiny-lora-r4-fp32-bs1-64px" in table
    assert "llama-7b" not in table
