"""FSDP2 mixed precision (``mixed_precision``: ``MixedPrecisionPolicy(param_dtype=...)`` over fp32
weights): the rank keeps fp32 shards, gradients and AdamW state, and all-gathers and
reduce-scatters in the lower precision; checked against FSDP2's arithmetic, a real 2-process gloo
run, and bad input."""
from __future__ import annotations

import pytest

from fixtures.cases import Case
from fixtures.parallel import Layout
from test_parallel import _layer_all_gather_bytes, simulate_rank


def test_a_bf16_policy_keeps_fp32_state_and_halves_every_collective_buffer():
    """4 ranks. The rank's parameters, gradients and AdamW state are the fp32 shards with or
    without the policy. Each layer's all-gather output (2 per layer with resharding) and
    reduce-scatter input (1) are bf16, half the fp32 buffers, which no longer appear; the
    all-gather inputs (the shard cast to bf16, ``FSDPParam.all_gather_inputs``) and the
    reduce-scatter outputs are bf16 shards, and each reduced shard is cast back to fp32, the
    gradient FSDP2 keeps (``foreach_reduce``'s ``_to_dtype_if_needed(..., orig_dtype)``, as the
    fp32 run's reduce-scatter output)."""
    flat = _layer_all_gather_bytes(4)
    plain, fp32 = simulate_rank(Layout(4, "fsdp"))
    mixed, tracker = simulate_rank(Layout(4, "fsdp", mixed_precision="bf16"))
    assert {k: v for k, v in mixed.items() if "peak" not in k} == {k: v for k, v in plain.items() if "peak" not in k}
    allocations = tracker.allocations()
    assert (allocations.count(flat), allocations.count(flat // 2)) == (0, 2 * 2 + 2)
    assert allocations.count(flat // 8) == 2 * 2 + 2           # bf16 shards: gather inputs, reduce outputs
    assert allocations.count(flat // 4) == fp32.allocations().count(flat // 4) == 2   # fp32 gradient shards
    assert mixed["step_peak"] < plain["step_peak"]


@pytest.mark.slow
def test_a_mixed_precision_rank_equals_a_real_two_process_gloo_run_to_the_byte():
    """Two real processes (gloo) with the bf16 policy, a full fine-tune: every rank's parameter,
    gradient and optimizer bytes equal the simulated rank's (peaks held from below, as in
    tests/test_parallel.py)."""
    from fixtures.multiprocess import run_ranks

    real = run_ranks(2, "fsdp", "llama-tiny", options={"mixed_precision": "bf16"})
    for rank, figures in enumerate(real):
        simulated, _ = simulate_rank(Layout(2, "fsdp", rank=rank, mixed_precision="bf16"))
        for peak in ("setup_peak", "step_peak"):
            assert figures.pop(peak) >= simulated.pop(peak)
        assert figures == simulated


@pytest.mark.parametrize("kwargs, message", [
    ({"mixed_precision": "fp8", "ranks": 2, "strategy": "fsdp"},
     r"unknown mixed_precision 'fp8'; valid choices: none, bf16, fp16"),
    ({"mixed_precision": "bf16", "ranks": 2, "strategy": "ddp"},
     r"mixed_precision 'bf16' applies to strategy 'fsdp' only \(FSDP2's MixedPrecisionPolicy\), not 'ddp'"),
    ({"mixed_precision": "bf16", "ranks": 2, "strategy": "fsdp", "quantization": "bf16"},
     r"mixed_precision 'bf16' .* with quantization 'bf16' it cannot apply; valid choices with it: quantization fp32"),
])
def test_a_policy_that_cannot_apply_is_one_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Case("llama-7b", "lora", **{"quantization": "fp32", "gpu": "a100_80gb", **kwargs})


def test_the_fit_flag_and_the_cases_file_key_make_the_same_case():
    from fixtures.case_file import parse_case
    from fixtures.fit import case_from, parser

    flags = case_from(parser().parse_args(["llama-tiny", "--quantization", "fp32", "--ranks", "2", "--strategy",
                                           "fsdp", "--mixed-precision", "bf16"]))
    row = parse_case({"model": "llama-tiny", "quantization": "fp32", "ranks": 2, "strategy": "fsdp",
                      "mixed_precision": "bf16"}, "cases.toml: case 1")
    assert flags == row and flags.layout.mixed_precision == "bf16"
    assert flags.id == "llama-tiny-lora-r8-fp32-fsdp2-mp-bf16-bs1-seq512"


def test_what_if_offers_the_policy_and_drops_it_where_a_switch_changes_the_weights_dtype():
    from fixtures.what_if import switches

    case = Case("llama-tiny", quantization="fp32", seq_len=64, gpu="a100_80gb", ranks=2, strategy="fsdp")
    variants = dict(switches(case))
    assert variants["bf16 mixed precision"].mixed_precision == "bf16"
    mixed = dict(switches(variants["bf16 mixed precision"]))   # every switch is a Case that can be
    assert "bf16 mixed precision" not in mixed
    assert mixed["nf4-dq-bf16"].mixed_precision == mixed["fp16 + autocast"].mixed_precision == "none"
