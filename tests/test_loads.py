"""How the frozen weights reach the GPU (``Case.load``, fixtures/loads.py): bitsandbytes 0.41's
quantization on ``.cuda()`` (a 2023 ``load_in_8bit``/``load_in_4bit``) and an fp32 load cast with
``.half()`` against arithmetic on their sources' allocations, their tiny twins run for real on CPU
with the simulator giving the same bytes, and the option as the cases file, ``pytest-vram fit`` and
the records spell it."""
from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from fixtures.cases import Case
from fixtures.loads import place
from fixtures.models import build_model
from fixtures.quantization import get_quantization
from pytest_vram.backends import CpuBackend
from pytest_vram.profiles import get_profile
from pytest_vram.record import stable_params
from pytest_vram.sim.backend import SimBackend
from test_configs import measure

V100 = get_profile("v100")
OUT, IN = 128, 256
N = OUT * IN


def load_one_linear(quantization: str, load: str) -> tuple[int, int, nn.Module]:
    """One bias-free OUT x IN linear loaded under the simulator (exact storage bytes): the peak
    while it is placed, what stays, the model."""
    backend = SimBackend(V100, gpu_models=False)
    backend.start()
    try:
        with torch.device("meta"):
            model = nn.Sequential(nn.Linear(IN, OUT, bias=False))
        quant = get_quantization(quantization)
        place(load, model, "cpu", False, quant, "")
        return backend.tracker.peak_bytes, backend.tracker.live_bytes, model
    finally:
        backend.stop()


def test_int8_on_cuda_holds_the_fp16_weight_and_both_int8_copies_at_once():
    """Int8Params.cuda @0.41.0: the fp16 weight, then double_quant's row and column absmax (fp32)
    and its column- and row-major int8 copies; CBt, SCBt and the fp16 weight are freed."""
    peak, live, model = load_one_linear("int8", "bnb-0.41")
    assert peak == 2 * N + 4 * OUT + 4 * IN + N + N
    assert live == N + 4 * OUT   # CB and SCB
    _, direct_live, direct = load_one_linear("int8", "direct")
    assert live == direct_live
    assert model[0].weight.dtype == direct[0].weight.dtype == torch.int8


@pytest.mark.parametrize("quantization", ["nf4", "nf4-dq"])
def test_4bit_on_cuda_holds_the_fp16_weight_beside_the_packed_codes(quantization):
    """Params4bit.cuda @0.41.0: the fp16 weight, quantize_4bit's absmax (fp32 per block of 64) and
    packed codes, the NF4 table (16 fp32); with double quantization the absmax's mean, the nested
    absmax (fp32 per block of 256) and the 8-bit absmax, while the fp32 absmax is still live."""
    blocks = N // 64
    double = quantization == "nf4-dq"
    kept = N // 2 + 16 * 4
    constants = 4 + 4 * -(-blocks // 256) + blocks if double else 4 * blocks
    peak, live, _ = load_one_linear(quantization, "bnb-0.41")
    assert live == kept + constants
    assert peak == 2 * N + kept + constants + (4 * blocks if double else 0)
    _, direct_live, _ = load_one_linear(quantization, "direct")
    # the same tensors, less today's per-layer copy of the 8-bit code map (0.41 shares its one table)
    assert direct_live - live == (1024 if quantization == "nf4-dq" else 0)


def test_cuda_half_holds_the_fp32_model_then_frees_each_weight_as_its_fp16_copy_is_made():
    """Module.half's _apply: parameters in its order, each fp16 copy made before the fp32 weight
    it replaces (param.data = ...) is freed; then the floating buffers; other buffers untouched."""
    backend = SimBackend(V100, gpu_models=False)
    backend.start()
    try:
        model = build_model("llama-tiny", "fp16", "cpu", load="cuda-half")
        peak, live = backend.tracker.peak_bytes, backend.tracker.live_bytes
    finally:
        backend.stop()
    sizes = [p.numel() for p in model.parameters()]
    floats = sum(b.numel() for b in model.buffers() if b.is_floating_point())
    others = sum(b.numel() * b.element_size() for b in model.buffers() if not b.is_floating_point())
    fp32 = 4 * sum(sizes) + 4 * floats + others
    assert peak == max(fp32 - 2 * sum(sizes[:j]) + 2 * k for j, k in enumerate(sizes))
    assert live == 2 * sum(sizes) + 2 * floats + others
    assert {p.dtype for p in model.parameters()} == {torch.float16}


@pytest.mark.parametrize("case", [
    Case("llama-7b", "lora", "int8", load="bnb-0.41"), Case("llama-7b", "lora", "nf4-dq", load="bnb-0.41"),
    Case("llama-7b", "lora", "fp16", load="cuda-half"), Case("sd15", "lora", "fp16", rank=4, autocast=True,
                                                             load="cuda-half")], ids=str)
def test_tiny_twin_loaded_so_trains_for_real_and_the_simulator_agrees(case):
    case = case.tiny_twin()
    loss, real = measure(CpuBackend(V100), case)
    _, sim = measure(SimBackend(V100, gpu_models=False), case)
    assert torch.isfinite(loss) and sim == real


def test_the_default_is_left_out_of_the_id_and_the_record():
    case = Case("llama-7b", "lora", "nf4-dq")
    assert case.load == "direct" and case.id == "llama-7b-lora-r8-nf4-dq-bs1-seq512"
    loaded = dataclasses.replace(case, load="bnb-0.41")
    assert loaded.id == "llama-7b-lora-r8-nf4-dq-bnb-0.41-bs1-seq512"

    def params(c):
        return stable_params(SimpleNamespace(params={"case": c}, indices={}, id=c.id))["case"]

    assert "load" not in params(case)
    assert params(loaded)["load"] == "bnb-0.41"


@pytest.mark.parametrize("kwargs, message", [
    ({"load": "bnb"}, r"unknown load 'bnb'; valid choices: direct, bnb-0.41, cuda-half"),
    ({"quantization": "fp16"}, (r"load 'bnb-0.41' quantizes with bitsandbytes 0.41; with quantization 'fp16' it "
                                r"cannot apply; valid choices with it: quantization int8, nf4, nf4-dq")),
    ({"quantization": "nf4-dq-bf16", "strategy": "fsdp", "ranks": 2},
     r"with quantization 'nf4-dq-bf16' it cannot apply"),
    ({"load": "cuda-half"}, (r"load 'cuda-half' casts an fp32 load with .half\(\); with quantization 'int8' it "
                             r"cannot apply; valid choices with it: quantization fp16")),
    ({"load": "cuda-half", "quantization": "fp16", "strategy": "fsdp1", "ranks": 2},
     r"load 'cuda-half' places whole weights on one GPU; with strategy 'fsdp1' \(sharded loading\) it cannot "
     r"apply; valid choices with it: load 'direct'"),
])
def test_a_load_that_cannot_be_is_one_error_naming_the_choices(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Case(**{"model": "llama-7b", "quantization": "int8", "load": "bnb-0.41", **kwargs})


def test_the_fit_flag_and_the_cases_file_key_make_the_same_case():
    from fixtures.case_file import parse_case
    from fixtures.fit import case_from, parser

    flags = case_from(parser().parse_args(["llama-7b", "--quantization", "int8", "--load", "bnb-0.41"]))
    row = parse_case({"model": "llama-7b", "quantization": "int8", "load": "bnb-0.41"}, "cases.toml: case 1")
    assert flags == row and flags.load == "bnb-0.41"
    with pytest.raises(ValueError, match=r"cases.toml: case 1: unknown load 'fp32'; valid choices: direct, "
                                         r"bnb-0.41, cuda-half"):
        parse_case({"model": "llama-7b", "quantization": "int8", "load": "fp32"}, "cases.toml: case 1")
