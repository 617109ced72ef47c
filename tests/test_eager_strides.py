"""Under the simulator a fake tensor gets the strides eager PyTorch gives the real one, size-1
dimensions included (they decide c10's memory-format checks, and with them copies such as
group_norm's): views of transposed tensors, elementwise ops with a scalar operand, and the
ops whose fast setup makes fresh contiguous or channels-last strides, each against a real CPU
run of the same expression."""
from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from pytest_vram.sim.eager_strides import eager_strides, reorder_dimensions
from pytest_vram.sim.fake_mode import SimFakeTensorMode


def attention_output(make):
    """diffusers' AttnProcessor2_0 on a 4-D input: [B, HW, C] -> transpose -> [B, C, H, W]."""
    return make(1, 1024, 64).transpose(-1, -2).reshape(1, 64, 32, 32)


EXPRESSIONS = {
    "transposed view": lambda make: attention_output(make),
    "plus residual": lambda make: attention_output(make) + make(1, 64, 32, 32),
    "divided by a number": lambda make: (attention_output(make) + make(1, 64, 32, 32)) / 2.0,
    "times a 0-dim tensor": lambda make: attention_output(make) * torch.tensor(3.0),
    "plus itself (fast setup)": lambda make: attention_output(make) + attention_output(make),
    "silu (fast setup)": lambda make: torch.nn.functional.silu(attention_output(make)),
    "channels-last input / number": lambda make: make(2, 8, 4, 4).contiguous(memory_format=torch.channels_last) / 2,
    "batch-1 LLaMA heads": lambda make: make(1, 16, 4 * 8).view(1, 16, 4, 8).transpose(1, 2) * 0.5,
    "broadcast bias": lambda make: make(1, 64, 32, 32).permute(0, 2, 3, 1) + make(64),
}


@pytest.mark.parametrize("name", EXPRESSIONS)
def test_fake_strides_are_eagers(name):
    expression = EXPRESSIONS[name]
    real = expression(torch.randn)
    with eager_strides(), SimFakeTensorMode(allow_non_fake_inputs=True):
        fake = expression(torch.empty)
    assert (fake.shape, fake.stride()) == (real.shape, real.stride())


def test_without_it_the_fake_strides_differ_where_eagers_do_not():
    """What the module fixes (torch 2.13): the transposed view and the scalar op, under torch's
    own FakeTensorMode (whose dispatch-cache keys are not the simulator's, so no entry made
    under the patches is found)."""
    with FakeTensorMode(allow_non_fake_inputs=True):
        assert EXPRESSIONS["transposed view"](torch.empty).stride() == (65536, 1, 2048, 64)
        assert EXPRESSIONS["divided by a number"](torch.empty).stride() == (65536, 1, 2048, 64)
    assert EXPRESSIONS["transposed view"](torch.randn).stride() == (64, 1, 2048, 64)
    assert EXPRESSIONS["divided by a number"](torch.randn).stride() == (64, 1, 2048, 64)


def test_a_view_eager_cannot_make_still_fails():
    """torch's fake kernel decides and raises (its error, a ValueError; eager's is a RuntimeError)."""
    with pytest.raises(RuntimeError, match="view size is not compatible"):
        torch.randn(4, 6).t().view(24)
    with eager_strides(), SimFakeTensorMode(allow_non_fake_inputs=True):
        t = torch.empty(4, 6).t()
        with pytest.raises(ValueError, match="Cannot view a tensor"):
            t.view(24)


def test_reorder_dimensions_orders_by_stride_then_size():
    """TensorIterator's order: smallest stride fastest; equal strides, the smaller size faster;
    a broadcast (stride 0) operand has no say."""
    t = torch.empty(1, 64, 32, 32).as_strided((1, 64, 32, 32), (64, 1, 2048, 64))
    assert reorder_dimensions((t,)) == [2, 3, 0, 1]
    assert reorder_dimensions((t, torch.empty(64).expand(1, 32, 32, 64).permute(0, 3, 1, 2))) == [2, 3, 0, 1]
    assert reorder_dimensions((torch.empty(3, 4, 5),)) == [0, 1, 2]


def test_the_patches_are_undone():
    from torch._prims_common import compute_elementwise_output_logical_to_physical_perm as before
    from torch._subclasses.fake_impls import op_implementations_dict

    view = op_implementations_dict[torch.ops.aten.view.default]
    with eager_strides():
        pass
    import torch._prims_common as prims_common

    assert prims_common.compute_elementwise_output_logical_to_physical_perm is before
    assert op_implementations_dict[torch.ops.aten.view.default] is view
