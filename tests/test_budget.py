"""The budget rule (plugin/pytest_vram/budget.py): which budget applies, what a marker may say,
and one enforcement that gives the same over-budget case the same status on every backend."""
import types

import pytest
from helpers import preload_simulator_shimmed_libraries

from pytest_vram import backends, budget
from pytest_vram.profiles import get_profile

pytest_plugins = ["pytester"]
preload_simulator_shimmed_libraries()
MiB = 2**20

BUDGETED = """
import torch, pytest

pytestmark = pytest.mark.t4

def test_module_profile(vram):
    with vram.phase("step"):
        x = torch.zeros(256)

@pytest.mark.v100
def test_own_profile(vram):
    with vram.phase("step"):
        x = torch.zeros(256)

@pytest.mark.vram_budget("2 GB")
def test_explicit(vram):
    with vram.phase("step"):
        x = torch.zeros(256)
"""


def run(pytester, *args):
    return pytester.runpytest("-p", "no:cacheprovider", *args)


def test_budget_is_the_closest_vram_budget_else_profile_marker_else_vram_gpu(pytester):
    import json

    pytester.makepyfile(test_b=BUDGETED)
    pytester.makepyfile(test_plain="def test_plain(vram):\n    pass\n")
    run(pytester, "--vram-backend=cpu", "--vram-gpu=a10g", "--vram-json=v.json").assert_outcomes(passed=4)
    recs = {r["case"]: r for r in json.loads((pytester.path / "v.json").read_text())["records"]}
    assert recs["test_module_profile"]["budget_bytes"] == get_profile("t4").total_bytes
    assert recs["test_own_profile"]["budget_bytes"] == get_profile("v100").total_bytes
    assert recs["test_own_profile"]["gpu"] == "v100"
    assert recs["test_explicit"]["budget_bytes"] == 2 * 10**9 and recs["test_explicit"]["gpu"] == "t4"
    assert recs["test_plain"]["budget_bytes"] == get_profile("a10g").total_bytes


@pytest.mark.parametrize("mark, message", [
    ("vram_budget(12)", "vram_budget(12): a number without a unit; write the size with its unit, such as '12GiB'*"),
    ("vram_budget('0GB')", "vram_budget('0GB'): a budget must be more than zero bytes"),
    ("vram_budget('-2GiB')", "vram_budget: malformed size '-2GiB'*"),
    ("vram_budget('nan GiB')", "vram_budget: malformed size 'nan GiB'*"),
    ("vram_budget('inf GiB')", "vram_budget: malformed size 'inf GiB'*"),
    ("vram_budget('" + "9" * 400 + "GiB')", "vram_budget: malformed size '999*...: larger than * bytes (16 EiB)*"),
    ("vram_budget()", "vram_budget needs a size with its unit*"),
])
def test_a_bad_budget_marker_is_one_usage_error(pytester, mark, message):
    pytester.makepyfile(test_m=f"import pytest\n\n@pytest.mark.{mark}\ndef test_m(vram):\n    pass\n")
    result = run(pytester, "--vram-backend=cpu")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: test_m.py::test_m: {message}"])
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
    assert "Traceback" not in result.stdout.str() + result.stderr.str()


class FakeCuda:
    """Just enough of torch.cuda for CudaBackend on a machine without a GPU: a 80 GiB card."""

    def __init__(self):
        self.fractions = []

    def get_device_properties(self, device):
        return types.SimpleNamespace(total_memory=80 * 2**30)

    def memory_reserved(self, device):
        return 0

    def set_per_process_memory_fraction(self, fraction, device):
        self.fractions.append(fraction)


@pytest.fixture
def fake_cuda(monkeypatch):
    cuda = FakeCuda()
    fake_torch = types.SimpleNamespace(cuda=cuda, zeros=lambda *a, **k: None)
    monkeypatch.setattr(backends, "torch", fake_torch)
    monkeypatch.setattr(backends.nvml, "process_used_bytes", lambda device: 500 * MiB)  # the context
    return cuda


@pytest.mark.parametrize("limit", [2**30, get_profile("v100").total_bytes])
def test_cuda_caps_its_allocator_at_the_budget_less_the_context(fake_cuda, limit):
    """An explicit vram_budget caps the real allocator as a profile does, so the allocation past
    it raises torch.OutOfMemoryError: the same "OOM" as sim and cpu (it was never capped)."""
    backend = backends.make_backend("cuda", get_profile("v100"), limit)
    assert backend.context == 500 * MiB and backend.allocation_cap == limit - 500 * MiB
    backend.start()
    backend.stop()
    assert fake_cuda.fractions == [(limit - 500 * MiB) / (80 * 2**30), 1.0]  # capped, then restored


def test_cuda_does_not_cap_a_budget_the_card_cannot_reach(fake_cuda):
    backend = backends.make_backend("cuda", None, 200 * 2**30)
    assert backend.allocation_cap is None


def test_cpu_raises_out_of_memory_at_the_allocation_past_the_budget_less_context():
    import torch

    t4 = get_profile("t4")
    backend = backends.make_backend("cpu", t4, t4.context_bytes + 4 * MiB)
    backend.start()
    try:
        kept = torch.zeros(MiB // 4)            # 1 MiB
        with pytest.raises(torch.OutOfMemoryError, match="tried to allocate 4194304 bytes with 1048576 in use"):
            torch.zeros(MiB)                    # 4 MiB more: past the 4 MiB left
        more = torch.zeros(3 * MiB // 4)        # 3 MiB: exactly the budget
    finally:
        backend.stop()
    assert backend.tracker.peak_bytes == 4 * MiB and kept.numel() + more.numel() == MiB


@pytest.mark.parametrize("oom_phase, peak, limit, status", [
    (None, 10, 10, "fits"), (None, 11, 10, "over budget"), ("step", 5, 10, "OOM"), (None, 10**12, None, "fits"),
])
def test_status_follows_the_one_rule(oom_phase, peak, limit, status):
    assert budget.status(oom_phase, peak, limit) == status
    assert budget.fits(oom_phase, peak, limit) == (status == "fits")


def test_verdict_messages_name_case_phase_peak_budget_and_overshoot():
    phase = types.SimpleNamespace(name="step", total=12 * MiB)
    b = budget.Budget(None, 10 * MiB)
    assert budget.verdict("c", b, {"step": phase}, None, False) == (
        "c: phase 'step' peaked at 0.012 GiB (12582912 bytes), over the budget of 0.010 GiB "
        "by 0.002 GiB (2097152 bytes)")
    assert budget.verdict("c", b, {"step": phase}, None, True) is None
    assert budget.verdict("c", b, {"step": phase}, "out of memory in phase 'step'", True) is None
    v100 = get_profile("v100")
    assert budget.verdict("c", budget.Budget(v100, v100.total_bytes), {"step": phase}, None, True) == (
        "c: expected OOM, peaked at 0.012 GiB of 15.782 GiB (v100) (phase 'step')")


def test_cpu_cuda_and_sim_implement_the_backend_protocol_side_by_side(fake_cuda):
    from pytest_vram.backend_protocol import Backend
    from pytest_vram.sim.backend import SimBackend

    v100 = get_profile("v100")
    made = [backends.make_backend(name, v100, v100.total_bytes) for name in ("cpu", "cuda", "sim")]
    assert [type(b) for b in made] == [backends.CpuBackend, backends.CudaBackend, SimBackend]
    assert all(isinstance(b, Backend) for b in made)
    assert not issubclass(backends.CudaBackend, backends.CpuBackend)
    assert [b.executes for b in made] == [True, True, False]
