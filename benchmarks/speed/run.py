"""The simulator's speed, side by side in one run (issue 16, must-have 3), written as JSON.

    PYTHONPATH=$PWD/plugin:$PWD python benchmarks/speed/run.py --matrix -o results/speed.json

Measures, reporting each figure's median (and all runs) and the ratios between them:

- ``qlora_in_process``: one LLaMA-7B QLoRA case (nf4-dq + LoRA r8 + checkpointing, bs1 seq512),
  creation + step, run in this process by :mod:`inprocess` (the fixture's flow without pytest;
  one warm-up run first, so imports and first-call caches are not counted);
- ``cache_key``: the same case in process with the simulator's FakeTensor cache key
  (:mod:`pytest_vram.sim.fake_mode`) and with torch's own ``_prep_args_for_hash`` put back,
  runs alternating, CPU seconds (``time.process_time``: less sensitive to other jobs on a
  shared machine than wall time) and the records of both, which must be equal;
- ``qlora_process``: the same case as a user runs it, ``pytest benchmarks -m v100 -k ID`` in a
  fresh process (imports, collection and the fixture included);
- ``step_vs_memtracker``: the LLaMA-7B LoRA fp16 bs1 seq512 training step (forward, backward,
  optimizer step) under PyTorch's MemTracker (patched to accept a PEFT model: see
  :mod:`memtracker`) against the same step under the simulator (budget unlimited so that it is
  not cut short by the V100's OOM); both on fake tensors, each with its own peak;
- ``accelerate_estimate``: what ``accelerate estimate-memory`` computes, through its Python API
  (the command itself fetches the config from the hub, which this suite never calls): the
  config the suite builds LLaMA-7B from, ``AutoModel.from_config`` under ``init_empty_weights``
  (as ``create_empty_model`` does), ``calculate_maximum_sizes`` and ``estimate_training_usage``
  for float16 ("Training using Adam" is the largest of its figures); timed against the LoRA
  fp16 case's creation + step in process, and its figure set beside the simulator's step peak;
- ``qlora_70b``: one single-GPU LLaMA-2-70B QLoRA case (nf4-dq + LoRA r8 + checkpointing, bs1
  seq512, on an A100 80 GB, which holds it), creation + step in a fresh process by
  ``inprocess.py``'s command line (imports not counted, first-call caches counted): seconds and
  the process's peak RSS, against the 7B QLoRA case run the same way (one run each);
- ``fit_cold_start``: ``pytest-vram fit llama-7b --adapter lora --quantization nf4-dq
  --checkpointing`` as a user types it, wall from a cold start (a fresh process: imports, the
  model's build and the step; issue 17's target is <= 10 s);
- ``fit_max_seq_len``: the same case with ``--max-seq-len`` (issue 17's target: <= 60 s), wall
  from a cold start, with the probes it printed and its answer. What one probe learns is reused
  by the next: the model is built once and each probe forks after the creation phase
  (fixtures/solver.py ``Prober``), so a probe costs one step, not a build;
- ``matrix`` (``--matrix``; minutes): the whole ``-m v100`` matrix serial and with ``-n 2``
  (pytest-xdist), each once, its records compared with results/sim-v100.json by
  ``pytest-vram compare`` (expect "no memory changes").

Wall times of a shared 2-core machine are noisy: quote the ratios, measured in one run.
``--only a,b -o FILE`` runs those sections and keeps the file's others; ``commands`` says, per
section, the command, when it started and the load average after it (the machine is shared).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path[:0] = [str(HERE), str(REPO), str(REPO / "plugin")]

from pytest_vram.history import write_json_atomic  # noqa: E402

QLORA = "llama-7b-lora-r8-nf4-dq-gc-bs1-seq512"
LORA_FP16 = "llama-7b-lora-r8-fp16-bs1-seq512"
UNLIMITED = 1 << 50  # bytes: no simulated OOM


def summary(values: list[float]) -> dict:
    return {"median_s": round(statistics.median(values), 3), "runs_s": [round(v, 3) for v in values]}


def ratio(a: dict, b: dict) -> float:
    return round(a["median_s"] / b["median_s"], 2)


def child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "plugin"), str(REPO), env.get("PYTHONPATH", "")])
    return env


def timed_process(argv: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=REPO, env=child_env(), capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return seconds, done


def qlora_in_process(runs: int) -> dict:
    from inprocess import case_by_id, run_in_process

    case = case_by_id(QLORA)
    run_in_process(case)  # warm-up
    return {"case": QLORA, **summary([run_in_process(case)[0] for _ in range(runs)])}


def cache_key(runs: int) -> dict:
    from torch._subclasses.fake_tensor import FakeTensorMode

    from inprocess import case_by_id, run_in_process
    from pytest_vram.sim.fake_mode import SimFakeTensorMode

    case = case_by_id(QLORA)
    fast = SimFakeTensorMode.__dict__["_prep_args_for_hash"]
    seconds: dict[str, list[float]] = {"torch_key": [], "sim_key": []}
    phases = {}
    run_in_process(case)  # warm-up
    try:
        for _ in range(runs):
            for name in seconds:
                SimFakeTensorMode._prep_args_for_hash = fast if name == "sim_key" else \
                    FakeTensorMode._prep_args_for_hash
                start = time.process_time()
                phases[name] = run_in_process(case)[2]
                seconds[name].append(time.process_time() - start)
    finally:
        SimFakeTensorMode._prep_args_for_hash = fast
    out = {name: summary(values) for name, values in seconds.items()}
    return {"case": QLORA, "clock": "process_time", **out, "torch_key_over_sim_key": ratio(out["torch_key"], out["sim_key"]),
            "records_equal": phases["torch_key"] == phases["sim_key"]}


def qlora_process(runs: int) -> dict:
    argv = [sys.executable, "-m", "pytest", "benchmarks", "-m", "v100", "-k", QLORA, "-p", "no:cacheprovider", "-q"]
    return {"case": QLORA, "command": " ".join(["python"] + argv[1:]),
            **summary([timed_process(argv)[0] for _ in range(runs)])}


def step_vs_memtracker(runs: int, memtracker_runs: int) -> dict:
    from inprocess import case_by_id, run_in_process
    from memtracker import step_under_memtracker

    case = case_by_id(LORA_FP16)
    run_in_process(case, UNLIMITED)  # warm-up
    ours, peak = [], None
    for _ in range(runs):
        _, step_seconds, phases = run_in_process(case, UNLIMITED)
        ours.append(step_seconds)
        peak = phases["step"]
    theirs, their_peak = [], None
    for _ in range(memtracker_runs):
        seconds, their_peak = step_under_memtracker(case)
        theirs.append(seconds)
    ours_s, theirs_s = summary(ours), summary(theirs)
    return {"case": LORA_FP16, "simulator_step": ours_s, "memtracker_step": theirs_s,
            "memtracker_over_simulator": ratio(theirs_s, ours_s),
            "simulator_step_peak_bytes": peak["peak"], "simulator_step_peak_requested_bytes": peak["peak_requested"],
            "simulator_step_peak_reserved_bytes": peak["reserved"], "memtracker_peak_bytes": their_peak}


def accelerate_estimate(runs: int) -> dict:
    from accelerate import init_empty_weights
    from accelerate.commands.estimate import estimate_training_usage
    from accelerate.utils import calculate_maximum_sizes
    from transformers import AutoModel, LlamaConfig

    from fixtures.models import get_model_spec
    from inprocess import case_by_id, run_in_process

    config = LlamaConfig(**get_model_spec("llama-7b").config)

    def estimate() -> tuple[float, int]:
        start = time.perf_counter()
        with init_empty_weights():
            model = AutoModel.from_config(config)
        total, _ = calculate_maximum_sizes(model)
        training = max(estimate_training_usage(total, "float16").values())
        return time.perf_counter() - start, int(training)

    estimate()  # warm-up
    figures = [estimate() for _ in range(runs)]
    case = case_by_id(LORA_FP16)
    ours = [run_in_process(case, UNLIMITED) for _ in range(runs)]
    theirs_s, ours_s = summary([f[0] for f in figures]), summary([o[0] for o in ours])
    step = ours[-1][2]["step"]
    return {"model": "llama-7b", "accelerate": theirs_s, "simulator_creation_and_step": ours_s,
            "simulator_over_accelerate": ratio(ours_s, theirs_s),
            "accelerate_training_using_adam_bytes": figures[-1][1],
            "simulator_step_total_bytes": step["total"],
            "accelerate_over_simulator_bytes": round(figures[-1][1] / step["total"], 2)}


def fresh_process_case(fields: list[str]) -> dict:
    argv = [sys.executable, str(HERE / "inprocess.py"), *fields]
    _, done = timed_process(argv)
    return json.loads(done.stdout.strip().splitlines()[-1])


def qlora_70b() -> dict:
    qlora = ["quantization=nf4-dq", "checkpointing=1", "gpu=a100_80gb"]
    big = fresh_process_case(["model=llama-2-70b", *qlora])
    small = fresh_process_case(["model=llama-7b", *qlora])
    return {"command": f"python benchmarks/speed/inprocess.py model=llama-2-70b {' '.join(qlora)}",
            "case": big["case"], "seconds": round(big["seconds"], 3), "peak_rss_bytes": big["peak_rss_bytes"],
            "phases": big["phases"], "same_run_7b": {k: small[k] for k in ("case", "peak_rss_bytes")}
            | {"seconds": round(small["seconds"], 3)},
            "seconds_70b_over_7b": round(big["seconds"] / small["seconds"], 2)}


def _cli_runs(args: list[str], runs: int) -> tuple[list[float], subprocess.CompletedProcess]:
    """``pytest-vram ARGS`` ``runs`` times from a cold start: the wall of each run and the last run."""
    argv = [sys.executable, "-c", "import sys; from pytest_vram.cli import main; sys.exit(main())", *args]
    walls = []
    for _ in range(runs):
        start = time.perf_counter()
        done = subprocess.run(argv, cwd=REPO, env=child_env(), capture_output=True, text=True)
        walls.append(time.perf_counter() - start)
        if done.returncode not in (0, 1):  # 0: fits (a value fits), 1: does not (none does): both are answers
            raise SystemExit(f"pytest-vram {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return walls, done


def fit_cold_start(runs: int) -> dict:
    args = ["fit", "llama-7b", "--adapter", "lora", "--quantization", "nf4-dq", "--checkpointing"]
    walls, done = _cli_runs(args, runs)
    verdict = next((line for line in done.stdout.splitlines() if "FIT" in line), "")
    return {"command": "pytest-vram " + " ".join(args), **summary(walls), "target_s": 10,
            "verdict": verdict.strip()}


MAX_SEQ_LEN = ["fit", "llama-7b", "--adapter", "lora", "--quantization", "nf4-dq", "--checkpointing", "--max-seq-len"]


def fit_search(args: list[str], runs: int) -> dict:
    """``pytest-vram ARGS`` (a solver search) from a cold start: wall per run, the probes it
    printed, the answer it gave."""
    walls, done = _cli_runs(args, runs)
    lines = done.stdout.splitlines()
    probes = [line.strip() for line in lines if line.lstrip().startswith("probe ")]
    return {"command": "pytest-vram " + " ".join(args), **summary(walls), "probes": len(probes),
            "probe_lines": probes, "answer": lines[-1].strip() if lines else ""}


def fit_max_seq_len(runs: int) -> dict:
    return {**fit_search(MAX_SEQ_LEN, runs), "target_s": 60}


def matrix() -> dict:
    out = {}
    for name, extra in (("serial", []), ("xdist_n2", ["-n", "2"])):
        with tempfile.TemporaryDirectory() as tmp:
            records = Path(tmp) / "records.json"
            argv = [sys.executable, "-m", "pytest", "benchmarks", "-m", "v100", "-p", "no:cacheprovider", "-q",
                    "--vram-json", str(records), *extra]
            seconds, _ = timed_process(argv)
            compare = subprocess.run([sys.executable, "-c", "import sys; from pytest_vram.cli import main; "
                                      "sys.exit(main())", "compare", "results/sim-v100.json", str(records)],
                                     cwd=REPO, env=child_env(), capture_output=True, text=True)
        out[name] = {"command": " ".join(["python"] + argv[1:-2 - len(extra)] + extra),
                     "wall_s": round(seconds, 1), "compare_with_sim_v100": compare.stdout.strip().splitlines()[-1:]}
    out["serial_over_xdist_n2"] = round(out["serial"]["wall_s"] / out["xdist_n2"]["wall_s"], 2)
    return out


SECTIONS = ["qlora_in_process", "cache_key", "qlora_process", "step_vs_memtracker", "accelerate_estimate",
            "qlora_70b", "fit_cold_start", "fit_max_seq_len", "matrix"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="counted runs of each in-process figure")
    parser.add_argument("--process-runs", type=int, default=3, help="counted runs of the single-case process")
    parser.add_argument("--search-runs", type=int, default=1, help="runs of the --max-seq-len search (~1 min each)")
    parser.add_argument("--memtracker-runs", type=int, default=1, help="runs under MemTracker (~30 s each)")
    parser.add_argument("--matrix", action="store_true", help="also time the whole -m v100 matrix (minutes)")
    parser.add_argument("-o", "--output", type=Path, help="write the JSON here (default: print it)")
    parser.add_argument("--only", help=f"comma-separated sections to run: {', '.join(SECTIONS)} (default: all "
                        "but matrix, and matrix with --matrix); with -o, the others are kept from the file")
    args = parser.parse_args(argv)
    only = SECTIONS[:-1] + (["matrix"] if args.matrix else []) if args.only is None else args.only.split(",")
    unknown = [name for name in only if name not in SECTIONS]
    if unknown:
        raise SystemExit(f"unknown section {unknown[0]!r}; valid choices: {', '.join(SECTIONS)}")
    command = "python benchmarks/speed/run.py " + " ".join(argv if argv is not None else sys.argv[1:])
    result = json.loads(args.output.read_text()) if args.only and args.output and args.output.exists() else {}
    result.setdefault("commands", {})
    result.pop("command", None)
    result["machine"] = {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()}
    runs = {"qlora_in_process": lambda: qlora_in_process(args.runs), "cache_key": lambda: cache_key(args.runs),
            "qlora_process": lambda: qlora_process(args.process_runs),
            "step_vs_memtracker": lambda: step_vs_memtracker(args.runs, args.memtracker_runs),
            "accelerate_estimate": lambda: accelerate_estimate(args.runs), "qlora_70b": qlora_70b,
            "fit_cold_start": lambda: fit_cold_start(args.process_runs),
            "fit_max_seq_len": lambda: fit_max_seq_len(args.search_runs), "matrix": matrix}
    for name in only:
        start = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        result[name] = runs[name]()
        result["commands"][name] = {"command": command, "started_utc": start,
                                    "load_average": [round(x, 2) for x in os.getloadavg()]}
    if "qlora_in_process" in result and "qlora_process" in result:
        result["process_over_in_process"] = ratio(result["qlora_process"], result["qlora_in_process"])
    if args.output:  # through a temporary file and a rename: never half-written
        write_json_atomic(args.output, result)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
