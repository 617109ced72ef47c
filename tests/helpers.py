"""Helpers shared by test modules (tests never import from other test modules).

``rec`` and ``history`` build the smallest valid ``--vram-json`` records and files;
``benchmark_json`` the shape pytest-benchmark writes (``pytest_benchmark.stats.Metadata.as_dict``)
around vram records.
"""
import json


def rec(case, peak, status="fits"):
    """A minimal memory record: one phase, ``step``, peaking at ``peak`` bytes."""
    phase = {"allocated": peak // 2, "peak": peak, "reserved": None, "context": 0, "total": peak,
             "breakdown": {}, "oom": status == "OOM"}
    return {"case": case, "status": status, "phases": {"step": phase}}


def history(path, records, machine=None):
    """Write a --vram-json history holding ``records`` to ``path``; return the path."""
    path.write_text(json.dumps({"format": "pytest-vram", "version": 1,
                                "machine_info": machine or {"backend": "sim"}, "records": records}))
    return path


def benchmark_json(records, machine_info=None, fullnames=None):
    """A pytest-benchmark JSON whose benchmarks carry these vram records."""
    names = fullnames or [f"test_b.py::test_b[{r['case']}]" for r in records]
    benches = [{"group": None, "name": name.rsplit("::", 1)[-1], "fullname": name, "params": None,
                "stats": {"min": 0.1}, "extra_info": {"vram": r}} for r, name in zip(records, names)]
    return {"machine_info": {"vram": {"backend": "sim"}} if machine_info is None else machine_info,
            "commit_info": {}, "benchmarks": benches, "datetime": "2026-01-01T00:00:00", "version": "5.3.1"}


def preload_simulator_shimmed_libraries() -> None:
    """The sim backend's shims import bitsandbytes, peft and transformers as a simulated test
    starts. pytester's in-process runs drop the modules first imported inside them, and
    bitsandbytes cannot be imported twice in one process (it registers torch operators): test
    modules that simulate in-process call this once, at import."""
    import importlib

    for name in ("bitsandbytes", "peft", "transformers.masking_utils"):
        try:
            importlib.import_module(name)
        except ImportError:
            pass
