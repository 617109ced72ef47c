"""LyCORIS 1.9.0's module forwards replayed on the installed lycoris-lora's modules
(fixtures/lycoris_2023.py), for the LyCORIS guidelines' anchors measured with it.

What 1.9.0's source keeps for backward (lycoris/modules/{locon,loha,lokr}.py
@1cc7cfbabea2964d6532589bbe9940485da908be): LoRA nothing weight-sized, LoHa and LoKr the rebuilt
weight (its bf16 autocast copy); the installed 4.1.3 keeps a weight-sized delta for every
algorithm. Values and gradients are the same computation either way."""
import functools

import pytest
import torch
from pytest_vram.backends import CpuBackend
from pytest_vram.meter import Meter
from pytest_vram.profiles import get_profile
from pytest_vram.sim.backend import SimBackend
from torch import nn

from fixtures.anchors import ANCHORS, get_anchor
from fixtures.lycoris_2023 import use_forwards_of

ALGOS = ["lora", "loha", "lokr"]
ORGS = {"linear": lambda: nn.Linear(64, 96), "conv1x1": lambda: nn.Conv2d(64, 96, 1)}


class _Network:
    """What use_forwards_of reads of a lycoris.kohya network: its module lists."""

    def __init__(self, *modules):
        self.text_encoder_loras, self.unet_loras = list(modules), []


def _module(algo: str, org: nn.Module, version: str | None, dtype=torch.float32, **kwargs):
    from lycoris.modules.locon import LoConModule
    from lycoris.modules.loha import LohaModule
    from lycoris.modules.lokr import LokrModule

    cls, dim, extra = {"lora": (LoConModule, 8, {}), "loha": (LohaModule, 8, {}),
                       "lokr": (LokrModule, 100000, {"factor": 4})}[algo]
    torch.manual_seed(0)
    module = cls("m", org, 1.0, dim, 4, **{**extra, **kwargs})
    for p in module.parameters():    # 1.9.0 and 4.1.3 zero one factor at init: no gradient would flow
        p.data.normal_()
    module.to(dtype)
    module.apply_to()
    use_forwards_of(_Network(module), version)
    return module


def _input(org: nn.Module, dtype=torch.float32) -> torch.Tensor:
    torch.manual_seed(1)
    shape = (2, 5, 64) if isinstance(org, nn.Linear) else (2, 64, 3, 3)
    return torch.randn(shape, dtype=dtype, requires_grad=True)


def _kept_beyond_the_frozen_weight(org: nn.Module, version: str | None, algo: str) -> list:
    """The tensors autograd keeps for backward that are weight-sized and not the frozen weight
    itself, for one autocast(bf16) forward as sd-scripts' mixed precision runs it."""
    _module(algo, org, version)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: (saved.append(t), t)[1], lambda t: t), \
            torch.autocast("cpu", dtype=torch.bfloat16):
        org(_input(org))
    frozen = org.weight.untyped_storage().data_ptr()
    return [t.dtype for t in saved if t.numel() == org.weight.numel() and t.untyped_storage().data_ptr() != frozen]


@pytest.mark.parametrize("org_dtype", [torch.bfloat16, torch.float32], ids=["unet-bf16", "te-fp32"])
@pytest.mark.parametrize("kind", ORGS)
@pytest.mark.parametrize("algo", ALGOS)
def test_1_9_0_keeps_the_rebuilt_weight_for_loha_and_lokr_and_nothing_weight_sized_for_lora(algo, kind, org_dtype):
    """Weight-sized bf16 tensors kept besides the frozen weight's own storage. The frozen op on
    the text encoder's fp32 weight keeps its bf16 autocast copy (on the bf16 UNet, the weight
    itself). 1.9.0: LoRA adds nothing to the frozen op; LoHa / LoKr run one op on the rebuilt
    weight instead of the frozen op and keep its bf16 copy. 4.1.3: the frozen op, plus the
    delta's op keeping the bf16 delta, for every algorithm."""
    frozen_copy = int(org_dtype == torch.float32)
    expected = {"1.9.0": frozen_copy if algo == "lora" else 1, None: frozen_copy + 1}
    for version, count in expected.items():
        org = ORGS[kind]().to(org_dtype).requires_grad_(False)
        assert _kept_beyond_the_frozen_weight(org, version, algo) == [torch.bfloat16] * count, version


@pytest.mark.parametrize("kind", ORGS)
@pytest.mark.parametrize("algo", ALGOS)
def test_1_9_0_forward_gives_the_installed_outputs_and_gradients(algo, kind):
    results = []
    for version in (None, "1.9.0"):
        torch.manual_seed(2)
        org = ORGS[kind]().double().requires_grad_(False)   # fp64: the two orders of the same sums agree
        module = _module(algo, org, version, torch.float64)
        x = _input(org, torch.float64)
        y = org(x)
        (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
        results.append((y.detach(), x.grad, {n: p.grad for n, p in module.named_parameters()}))
    (y0, gx0, g0), (y1, gx1, g1) = results
    torch.testing.assert_close(y1, y0)
    torch.testing.assert_close(gx1, gx0)
    assert set(g1) == set(g0) and all(g is not None for g in g1.values())
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name])


def test_an_unknown_version_or_an_unreplayed_setting_is_one_clear_error():
    with pytest.raises(ValueError, match=r"unknown LyCORIS version '1\.8'; valid choices: 1\.9\.0"):
        _module("loha", nn.Linear(8, 8), "1.8")
    with pytest.raises(ValueError, match="replayed only without dropout.*'rank_dropout': 0.5"):
        _module("loha", nn.Linear(8, 8), "1.9.0", rank_dropout=0.5)


def test_the_lycoris_anchors_run_1_9_0s_forwards():
    """Every replayed row of the guidelines' table names LyCORIS 1.9.0, and the network built for
    it runs the replayed forward in each adapted module."""
    from fixtures.lycoris_2023 import _FORWARDS
    from fixtures.replay import build

    rows = [a for a in ANCHORS if a.recipe == "kohya_sd_scripts_2023"]
    assert rows and {a.adapter["lycoris_version"] for a in rows} == {"1.9.0"}
    model = build(get_anchor("lycoris-sd1-loha-attn-mlp-dim16-rtx4090").tiny_twin(), "cpu", fill=True)
    modules = [*model.network.text_encoder_loras, *model.network.unet_loras]
    forwards = {m.org_module[0].forward.func for m in modules if isinstance(m.org_module[0].forward, functools.partial)}
    assert len(modules) > 0 and forwards == {_FORWARDS["LohaModule"]}
    assert all(m.org_module[0].forward.args == (m,) for m in modules)


@pytest.mark.slow
@pytest.mark.parametrize("anchor_id", ["lycoris-sd1-lora-attn-mlp-dim32-rtx4090", "lycoris-sd1-loha-attn-mlp-dim16-rtx4090"])
def test_simulating_a_cpu_target_reproduces_the_real_cpu_run_of_the_1_9_0_replay(anchor_id):
    """sd-scripts' step with 1.9.0's forwards on the tiny SD twin: the simulator (CPU target)
    counts the bytes a real CPU run allocates."""
    from fixtures.replay import replay

    twin = get_anchor(anchor_id).tiny_twin()
    profile = get_profile(twin.gpu)

    def run(backend):
        torch.manual_seed(0)
        meter = Meter(backend, profile, None)
        backend.start()
        try:
            replay(twin, meter)
        finally:
            backend.stop()
        return {f"{name}.{k}": getattr(p, k) for name, p in meter.phases.items() for k in ("allocated", "peak")}

    assert run(SimBackend(profile, gpu_models=False)) == run(CpuBackend(profile))
