"""What importing the suite does: nothing measured is made at import time inside a measurement,
and start-up stays free of torch.compile's compiler (a cold ``pytest-vram fit`` pays every import)."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_suite_starts_without_inductor():
    """Importing the suite (and with it bitsandbytes) leaves torch.compile's compiler unimported:
    bitsandbytes' CPU kernels are compiled at their first real call, which a simulation never makes."""
    code = "import fixtures, sys; print('torch._inductor.compile_fx' in sys.modules, 'bitsandbytes' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.split() == ["False", "True"]


def test_no_suite_module_makes_tensors_at_import_once_the_package_is_imported():
    """A module that builds a tensor when imported, imported first inside a measurement (a
    worker imports lazily), would charge it to that case: fixtures/__init__ imports every such
    module before anything is measured. Checked in a fresh process: each suite module imported
    under a tracker after the package, no storage left alive."""
    code = """
import importlib, pkgutil, fixtures
from pytest_vram.tracker import StorageTracker
tracker = StorageTracker()
kept = []
with tracker:
    for info in pkgutil.iter_modules(fixtures.__path__):
        kept.append(importlib.import_module("fixtures." + info.name))
print(tracker.live_bytes)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.split()[-1] == "0"


def test_the_simulator_alone_starts_without_inductor():
    """A project that uses the plugin without the suite: the sim backend's bitsandbytes shims import
    bitsandbytes with its compile deferred too."""
    code = """
import sys
from pytest_vram.profiles import get_profile
from pytest_vram.sim.backend import SimBackend
backend = SimBackend(get_profile("v100"))
backend.start()
backend.stop()
print('torch._inductor.compile_fx' in sys.modules, 'bitsandbytes' in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.split() == ["False", "True"]
