"""What the ``vram`` fixture costs a trivial test on the cpu backend.

Writes N trivial tests twice into a temporary folder, once using the fixture and once not, runs
each with pytest (a fresh process; best of R runs) and reports the per-test difference. Run
"light" (a bare project) and "heavy" (its conftest imports the suite's model libraries, as
``pytest benchmarks`` does: a big heap is what made a per-test ``gc.collect()`` cost ~120 ms).

    python benchmarks/fixture_overhead.py --tests 1000 --repeat 3 -o results/fixture-overhead.json

Not a test module (pytest collects only ``test_*.py``); it knows no pytest internals, it runs
pytest as a user does.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAVY_CONFTEST = "import fixtures  # noqa: F401  (transformers, diffusers, peft, bitsandbytes, lycoris)\n"


def write_tests(folder: Path, count: int, fixture: bool, heavy: bool) -> None:
    folder.mkdir()
    arg = "vram" if fixture else ""
    body = "".join(f"def test_{i}({arg}):\n    pass\n\n" for i in range(count))
    (folder / "test_trivial.py").write_text(body)
    (folder / "conftest.py").write_text(HEAVY_CONFTEST if heavy else "")


def run_once(folder: Path) -> float:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "plugin"), str(REPO),
                                                       os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--vram-backend=cpu",
           "--benchmark-disable", "-p", "no:randomly", str(folder)]
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"pytest failed in {folder}:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    return elapsed


def measure(count: int, repeat: int, heavy: bool) -> dict:
    with tempfile.TemporaryDirectory(prefix="vram-overhead-") as tmp:
        times = {}
        for fixture in (False, True):
            folder = Path(tmp) / ("with" if fixture else "without")
            write_tests(folder, count, fixture, heavy)
            times[fixture] = min(run_once(folder) for _ in range(repeat))
    per_test_ms = (times[True] - times[False]) / count * 1000
    return {"conftest": "imports the suite's libraries" if heavy else "empty", "tests": count,
            "best_of": repeat, "seconds_without_fixture": round(times[False], 3),
            "seconds_with_fixture": round(times[True], 3), "overhead_ms_per_test": round(per_test_ms, 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tests", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("-o", "--output", help="write the JSON result here")
    args = parser.parse_args(argv)
    result = {"command": "python benchmarks/fixture_overhead.py " + " ".join(argv or sys.argv[1:]),
              "backend": "cpu", "python": platform.python_version(), "machine": platform.machine(),
              "cpus": os.cpu_count(),
              "runs": [measure(args.tests, args.repeat, heavy) for heavy in (False, True)]}
    text = json.dumps(result, indent=2) + "\n"
    if args.output:
        Path(args.output).write_text(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
