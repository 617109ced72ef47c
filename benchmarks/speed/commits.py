"""The simulator's speed at several commits, side by side on this machine, written as JSON.

    python benchmarks/speed/commits.py d3472c9 HEAD -o results/speed-commits.json

Absolute times of a shared machine drift from day to day, so a figure measured today cannot be
set against one measured last week to say whether the code got slower. This script answers that
question: each commit is checked out (``git worktree add --detach``, removed afterwards) and the
LLaMA-7B QLoRA case (``speed/run.py``'s ``QLORA``) is run in that checkout's own code, in a
fresh process per commit and round, the commits alternating round by round, so that a change in
the machine's speed during the run touches them all alike. Each process runs the case once as a
warm-up and then ``--runs`` times through that checkout's ``benchmarks/speed/inprocess.py``
(creation + step, the fixture's flow without pytest), timing CPU seconds
(``time.process_time``, less sensitive to other jobs than wall time). The JSON holds, per
commit, every run's CPU seconds, the median over all rounds, each commit's median over the
first's, and the records (each phase's peak and reserved bytes) its code produced.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path[:0] = [str(HERE)]

from run import QLORA  # noqa: E402  (run.py puts the plugin on the path)

from pytest_vram.history import write_json_atomic  # noqa: E402

# run in the checkout's own code: its inprocess.py, its fixtures, its plugin
CHILD = """
import json, sys, time, warnings
warnings.filterwarnings("ignore")
sys.path[:0] = [{speed!r}, {root!r}, {plugin!r}]
from inprocess import case_by_id, run_in_process
case = case_by_id({case!r})
run_in_process(case)
seconds = []
for _ in range({runs}):
    start = time.process_time()
    phases = run_in_process(case)[2]
    seconds.append(time.process_time() - start)
print(json.dumps({{"cpu_s": seconds, "phases": {{n: {{"peak": p["peak"], "reserved": p["reserved"]}}
                                                   for n, p in phases.items()}}}}))
"""


def run_at(checkout: Path, runs: int) -> dict:
    code = CHILD.format(speed=str(checkout / "benchmarks" / "speed"), root=str(checkout),
                        plugin=str(checkout / "plugin"), case=QLORA, runs=runs)
    done = subprocess.run([sys.executable, "-c", code], cwd=checkout, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": ""})
    if done.returncode != 0:
        raise SystemExit(f"the case failed at {checkout}:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("revs", nargs="+", help="commits to compare (the first is the reference)")
    p.add_argument("--rounds", type=int, default=3, help="processes per commit, alternating (default 3)")
    p.add_argument("--runs", type=int, default=3, help="timed runs per process after a warm-up (default 3)")
    p.add_argument("-o", "--output", required=True, help="JSON file to write")
    args = p.parse_args(argv)
    shas = []
    for rev in args.revs:
        parsed = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"], cwd=REPO,
                                capture_output=True, text=True)
        if parsed.returncode != 0:
            raise SystemExit(f"unknown commit {rev!r}; valid choices: a commit of this repository (a hash, a "
                             "branch, a tag, HEAD~N)")
        shas.append(parsed.stdout.strip())
    with tempfile.TemporaryDirectory() as scratch:
        checkouts = []
        for sha in shas:
            path = Path(scratch) / sha[:12]
            subprocess.run(["git", "worktree", "add", "--detach", str(path), sha], cwd=REPO, check=True,
                           capture_output=True)
            checkouts.append(path)
        try:
            results: dict[str, dict] = {sha: {"cpu_s": []} for sha in shas}
            for round_ in range(args.rounds):
                for sha, checkout in zip(shas, checkouts):
                    print(f"round {round_ + 1}/{args.rounds}: {sha[:12]}", file=sys.stderr, flush=True)
                    got = run_at(checkout, args.runs)
                    results[sha]["cpu_s"] += [round(s, 3) for s in got["cpu_s"]]
                    results[sha]["phases"] = got["phases"]
        finally:
            for checkout in checkouts:
                subprocess.run(["git", "worktree", "remove", "--force", str(checkout)], cwd=REPO, capture_output=True)
    reference = statistics.median(results[shas[0]]["cpu_s"])
    for sha in shas:
        median = statistics.median(results[sha]["cpu_s"])
        results[sha]["median_cpu_s"] = round(median, 3)
        results[sha]["over_first"] = round(median / reference, 2)
    command = "python benchmarks/speed/commits.py " + " ".join(argv if argv is not None else sys.argv[1:])
    write_json_atomic(args.output, {
        "case": QLORA, "clock": "process_time", "command": command, "revs": dict(zip(args.revs, shas)),
        "load_average_after": [round(x, 2) for x in os.getloadavg()], "commits": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
