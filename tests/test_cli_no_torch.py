"""The history commands run on a CI box without torch (issue 14): ``pytest-vram table|compare|
plot|merge`` in a fresh interpreter where ``import torch`` fails. And ``plot`` without
matplotlib is one clear error, not a ModuleNotFoundError."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import pytest_vram

pytestmark = pytest.mark.slow   # subprocesses

BASELINE = Path(__file__).resolve().parent.parent / "results" / "sim-v100.json"
HEAVY = ("torch", "numpy", "transformers", "diffusers", "matplotlib")


def cli(*args: str, blocked: tuple[str, ...] = ("torch",), cwd=None) -> subprocess.CompletedProcess:
    """Run ``pytest-vram ARGS`` with ``blocked`` modules unimportable; the child prints the heavy
    modules it ended up importing on its last line of stderr."""
    code = (f"import sys, json\nfor name in {list(blocked)!r}: sys.modules[name] = None\n"
            "from pytest_vram.cli import main\n"
            "try:\n    code = main(sys.argv[1:])\n"
            f"finally:\n    print(json.dumps([m for m in {list(HEAVY)!r} if sys.modules.get(m)]), file=sys.stderr)\n"
            "sys.exit(code)\n")
    plugin_dir = str(Path(pytest_vram.__file__).resolve().parent.parent)
    env = os.environ | {"PYTHONPATH": os.pathsep.join([plugin_dir, os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=120)


def loaded_heavy(result) -> list[str]:
    return json.loads(result.stderr.strip().splitlines()[-1])


@pytest.mark.parametrize("args, shown", [
    (["table", str(BASELINE), "--breakdown"], "llama-7b-none-fp16-bs1-seq512"),
    (["compare", str(BASELINE), str(BASELINE), "--fail", "step.peak:5%", "--format", "markdown"], "no memory changes"),
])
def test_table_and_compare_run_without_torch_and_import_nothing_heavy(args, shown):
    result = cli(*args)
    assert result.returncode == 0, result.stderr
    assert shown in result.stdout
    assert loaded_heavy(result) == []


def test_merge_runs_without_torch(tmp_path):
    doc = json.loads(BASELINE.read_text())
    halves = [tmp_path / "1.json", tmp_path / "2.json"]
    for i, path in enumerate(halves):
        path.write_text(json.dumps(doc | {"records": doc["records"][i::2]}))
    result = cli("merge", *map(str, halves), "-o", str(tmp_path / "all.json"))
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "all.json").read_text())["records"] == doc["records"]
    assert loaded_heavy(result) == []


def test_plot_runs_without_torch(tmp_path):
    result = cli("plot", str(BASELINE), "-o", str(tmp_path / "m.png"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "m.png").read_bytes()[:4] == b"\x89PNG"
    assert "torch" not in loaded_heavy(result)


def test_plot_without_matplotlib_is_one_clear_error(tmp_path):
    result = cli("plot", str(BASELINE), "-o", str(tmp_path / "m.png"), blocked=("torch", "matplotlib"))
    assert result.returncode == 2
    assert result.stderr.splitlines()[0] == ("pytest-vram: error: pytest-vram plot needs matplotlib: "
                                             "pip install 'pytest-vram[plot]'")
    assert not (tmp_path / "m.png").exists()
