"""Replaying an older torch's autograd for anchors measured with it (fixtures/legacy_torch.py)."""
import pytest
import torch
import torch.nn.functional as F

from fixtures.legacy_torch import autograd_of

SPELLINGS = [
    ("F.softmax", lambda t: F.softmax(t, dim=-1)),
    ("F.softmax dtype", lambda t: F.softmax(t, -1, dtype=torch.float64)),
    ("Tensor.softmax", lambda t: t.softmax(-1)),
    ("torch.softmax", lambda t: torch.softmax(t, -1)),
    ("F.log_softmax", lambda t: F.log_softmax(t, dim=-1)),
    ("Tensor.log_softmax", lambda t: t.log_softmax(-1)),
]


@pytest.mark.parametrize("name, softmax", SPELLINGS, ids=[s[0] for s in SPELLINGS])
def test_torch_1_10_keeps_softmax_input_for_backward_and_gives_the_same_gradient(name, softmax):
    x = torch.randn(3, 5, dtype=torch.float32, requires_grad=True)
    weights = torch.arange(5.0, dtype=torch.float64 if "dtype" in name else torch.float32)
    scores = x * 2                                   # the input softmax gets: an intermediate
    today = softmax(scores)
    (today * weights).sum().backward()
    expected, x.grad = x.grad.clone(), None
    kept = [a for a in dir(today.grad_fn) if a.startswith("_saved_")]
    assert "_saved_result" in kept and "_saved_self" not in kept, "torch 2.13 keeps the result, not the input"

    with autograd_of("1.10"):
        scores = x * 2
        legacy = softmax(scores)
    saved = legacy.grad_fn.saved_tensors
    assert any(t.untyped_storage().data_ptr() == scores.untyped_storage().data_ptr() for t in saved)
    assert legacy.dtype == today.dtype
    (legacy * weights).sum().backward()
    torch.testing.assert_close(x.grad, expected)


@pytest.mark.parametrize("version", [None, "1.11", "2.13"])
def test_versions_from_1_11_on_run_the_installed_autograd(version):
    x = torch.randn(2, 4, requires_grad=True)
    with autograd_of(version):
        y = F.softmax(x * 2, -1)
    assert type(y.grad_fn).__name__ == "SoftmaxBackward0"


def test_without_grad_nothing_is_wrapped():
    with autograd_of("1.10"), torch.no_grad():
        y = F.softmax(torch.randn(2, 4, requires_grad=True), -1)
    assert y.grad_fn is None


def test_a_malformed_version_is_one_clear_error():
    with pytest.raises(ValueError, match="malformed torch version 'one.ten'"):
        with autograd_of("one.ten"):
            pass


def _gelu_under_fp16_autocast(version):
    """F.gelu of an fp16 activation under (CPU) fp16 autocast, as torch ``version`` ran it: the
    result, what GeluBackward saved, and the input's gradient. A real CPU run."""
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(0)).half().requires_grad_()
    with autograd_of(version), torch.autocast("cpu", dtype=torch.float16):
        h = x * 2                                    # an fp16 intermediate, as a linear's output
        y = F.gelu(h)
    saved = y.grad_fn._saved_self
    y.float().sum().backward()
    return y, saved, x.grad


def test_torch_1_9_autocast_runs_gelu_in_fp32_and_keeps_the_fp32_copy():
    """torch 1.9.1's CUDA autocast lists gelu as fp32 (its autocast_test_lists.py nn_fp32): the
    fp16 input is cast, the fp32 copy is what GeluBackward keeps (twice the fp16 bytes), the
    result is fp32; the gradient reaches the fp16 input in fp16."""
    y, saved, grad = _gelu_under_fp16_autocast("1.9")
    assert y.dtype == torch.float32 and saved.dtype == torch.float32 and saved.shape == (4, 8)
    assert grad.dtype == torch.float16
    today, today_saved, today_grad = _gelu_under_fp16_autocast("1.10")
    assert today.dtype == torch.float16 and today_saved.dtype == torch.float16
    torch.testing.assert_close(grad, today_grad, atol=2e-3, rtol=2e-3)


def test_gelu_outside_autocast_or_in_fp32_is_left_alone_on_torch_1_9():
    x = torch.randn(3, dtype=torch.float16, requires_grad=True)
    with autograd_of("1.9"):
        assert F.gelu(x * 1).dtype == torch.float16              # no autocast: no policy
        with torch.autocast("cpu", dtype=torch.float16):
            w = torch.randn(3, requires_grad=True)
            y = F.gelu(w * 1)                                    # already fp32: no copy
    assert y.dtype == torch.float32 and y.grad_fn._saved_self.dtype == torch.float32
