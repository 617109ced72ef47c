"""Value reads under the simulator: documented host-side stand-ins, so real training loops run."""
import pytest
import torch

from fixtures.adapters import apply_adapter
from fixtures.models import build_model
from pytest_vram.backends import CpuBackend
from pytest_vram.meter import Meter
from pytest_vram.profiles import get_profile
from pytest_vram.sim.backend import SimBackend

V100 = get_profile("v100")


@pytest.fixture
def sim():
    backend = SimBackend(V100)
    backend.start()
    try:
        yield backend
    finally:
        backend.stop()


def test_item_bool_float_and_tolist_read_zero(sim):
    x = torch.empty(4, 4)
    loss = x.sum()
    assert loss.item() == 0.0 and float(loss) == 0.0 and bool(loss > 0) is False
    assert int(torch.empty((), dtype=torch.int64)) == 0
    assert x[0].tolist() == [0.0] * 4


def test_values_torch_knows_are_kept(sim):
    assert torch.tensor(3.0).add(1).item() == 4.0


def test_nonzero_stands_in_with_its_largest_output(sim):
    """diffusers' index_for_timestep: (schedule == t).nonzero(), then .item()."""
    schedule = torch.arange(1000)
    indices = (schedule == 7).nonzero()
    assert indices.shape == (1000, 1) and indices.dtype == torch.int64
    assert indices[1].item() == 0
    assert torch.masked_select(torch.empty(3, 4), torch.empty(4, dtype=torch.bool)).shape == (12,)


def test_other_data_dependent_shapes_fail_with_one_clear_error(sim):
    with pytest.raises(RuntimeError, match="output shape that depends on tensor values"):
        torch.unique(torch.empty(10))


def trainer_loop(model, device, micro_batches=2, seq_len=16):
    """An HF-Trainer-style optimizer step: fp16 autocast, GradScaler (scale, unscale_, step,
    update), clip_grad_norm_(1.0), gradient accumulation, loss.item() logging."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    scaler = torch.amp.GradScaler(device)
    gen = torch.Generator(device=device).manual_seed(0)
    logged = []
    for _ in range(micro_batches):
        ids = torch.randint(0, model.config.vocab_size, (1, seq_len), device=device, generator=gen)
        with torch.autocast(device, dtype=torch.float16):
            loss = model(input_ids=ids, labels=ids).loss / micro_batches
        scaler.scale(loss).backward()
        logged.append(loss.detach().item())
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return logged, optimizer


def run_loop(backend):
    meter = Meter(backend, backend.profile, None)
    backend.start()
    try:
        with meter.phase("creation"):
            model = apply_adapter(build_model("llama-tiny", "fp32", fill=backend.executes), "llm", "lora", 8)
            meter.track(model)
        model.train()
        with meter.phase("step"):
            logged, optimizer = trainer_loop(model, backend.torch_device)
        stepped = all(len(s) > 0 for s in optimizer.state.values()) and len(optimizer.state) > 0
    finally:
        backend.stop()
    return meter, logged, stepped


def test_hf_trainer_style_loop_simulates_under_a_gpu_profile():
    meter, logged, stepped = run_loop(SimBackend(V100))
    assert logged == [0.0, 0.0] and stepped      # found_inf read as 0: the optimizer stepped
    step = meter.phases["step"]
    assert step.peak > meter.phases["creation"].allocated and step.peak_requested <= step.peak


def test_hf_trainer_style_loop_bytes_equal_a_real_cpu_run():
    """For a CPU target the stand-ins change no path (a real run finds no inf either)."""
    real, _, real_stepped = run_loop(CpuBackend(V100))
    sim, _, sim_stepped = run_loop(SimBackend(V100, gpu_models=False))
    assert real_stepped and sim_stepped
    for phase in ("creation", "step"):
        r, s = real.phases[phase], sim.phases[phase]
        assert (s.allocated, s.peak, s.breakdown) == (r.allocated, r.peak, r.breakdown)
