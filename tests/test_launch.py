"""The multi-process launch (fixtures/launch.py): one process per rank, each measuring itself
with a real backend, one record per rank that lines up with the simulator's record of that rank.
Here the gloo + cpu backend path runs; the NCCL + cuda path is the same code on a GPU machine."""
from __future__ import annotations

import pytest

from fixtures.cases import Case
from fixtures.fit import limit_of, record_of
from fixtures.launch import binding_rank, command, launch, measure_rank, rank_case
from pytest_vram.profiles import get_profile
from pytest_vram.sim.backend import SimBackend
from pytest_vram.sim.process_group import fake_process_group

TINY = dict(model="llama-tiny", quantization="fp32", seq_len=64, ranks=2)


def simulated_record(case: Case) -> dict:
    """The simulator's record of ``case``'s measured rank on a CPU target (GPU models off: the
    bytes a real CPU run allocates), through the same measure_rank as a launched rank."""
    backend = SimBackend(get_profile(case.gpu), gpu_models=False, budget=limit_of(case))
    with fake_process_group(case.ranks, case.measured_rank) as mesh:
        return record_of(case, measure_rank(case, backend, mesh))


@pytest.mark.parametrize("case, backend, message", [
    (Case(**TINY, strategy="fsdp"), "tpu", "unknown launch backend 'tpu'; valid choices: cuda, cpu"),
    (Case("llama-tiny"), "cpu", "runs on one GPU (ranks=1): nothing to launch"),
    (Case(**TINY, strategy="fsdp"), "cuda", "ranks=2 needs 2 CUDA GPUs"),
    (Case("llama-7b", ranks=2, strategy="ddp"), "cpu", "llama-7b is full-size: the cpu backend runs only tiny"),
])
def test_a_launch_that_cannot_run_is_one_clear_error(case, backend, message, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(ValueError, match="") as exc:
        launch(case, backend)
    assert message in str(exc.value)


def test_the_command_line_says_a_bad_launch_in_one_line(capsys):
    assert command(["llama-tiny", "--ranks", "2", "--strategy", "fsdp", "--backend", "tpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("launch: error: unknown launch backend 'tpu'") and err.count("\n") == 1


def test_the_binding_rank_is_the_largest_peak():
    records = [{"peak_total_bytes": p, "parallel": {"rank": r}} for r, p in enumerate((5, 7, 7, 3))]
    assert binding_rank(records)["parallel"]["rank"] == 1


@pytest.mark.slow
@pytest.mark.parametrize("adapter, strategy", [("none", "fsdp"), ("lora", "ddp")])
def test_each_launched_rank_has_its_simulated_records_fields(adapter, strategy):
    """Two gloo processes with the cpu backend: every rank's record has the simulator's fields,
    case id (``-rank1`` for rank 1), rank, params and phases, so ``pytest-vram compare`` pairs a
    launched rank with its simulated twin. The launched ranks' numbers are not compared here:
    on two gloo processes they vary between identical runs (seen in this session, about one run
    in three: a rank ending a phase 131,072 B / 681,280 B above its twin, a DDP rank's peak
    holding 78,336 B fewer activations; gloo's own thread and DDP's reducer are the suspects, not
    traced). The per-rank weight, gradient and optimizer bytes of real gloo runs are checked to
    the byte in tests/test_parallel.py, test_ddp.py, test_offload.py and test_fsdp_qlora.py."""
    case = Case(**TINY, adapter=adapter, strategy=strategy)
    real = launch(case, "cpu")
    assert [r["parallel"] for r in real] == [{"ranks": 2, "strategy": strategy, "rank": k} for k in (0, 1)]
    for rank, got in enumerate(real):
        sim = simulated_record(rank_case(case, rank))
        assert sorted(got) == sorted(sim) and got["case"] == sim["case"] and got["test"] == sim["test"]
        assert got["backend"] == "cpu" and got["params"] == sim["params"]
        assert sorted(got["phases"]) == sorted(sim["phases"])
        for name, phase in got["phases"].items():
            assert sorted(phase) == sorted(sim["phases"][name])
            assert sorted(phase["breakdown"]) == sorted(sim["phases"][name]["breakdown"])
    assert real[1]["case"].endswith("-rank1-bs1-seq64")
