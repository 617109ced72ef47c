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
