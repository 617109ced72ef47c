"""Helpers shared by test modules (tests never import from other test modules)."""
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
