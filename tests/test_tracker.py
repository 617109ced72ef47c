"""The storage tracker against arithmetic: every number here is computed by hand."""
import torch
from torch import nn

from pytest_vram.tracker import StorageTracker

F32 = 4


def test_allocations_frees_and_peak_are_exact():
    with StorageTracker() as tracker:
        a = torch.ones(1000)                 # 4000 B
        b = a * 2                            # +4000 B -> 8000 live
        view = b[:10]                        # a view: no new storage
        del a                                # 4000 live
        c = torch.zeros(250, dtype=torch.float64)  # +2000 -> 6000
        assert tracker.live_bytes == 6000
        assert tracker.peak_bytes == 8000
        del b
        assert tracker.live_bytes == 6000    # the view keeps b's storage alive
        del view, c
    assert tracker.live_bytes == 0
    assert tracker.peak_bytes == 8000


def test_mlp_training_step_peak_by_hand():
    batch, n_in, n_hidden = 8, 64, 128
    x_bytes, h_bytes, scalar = batch * n_in * F32, batch * n_hidden * F32, F32
    with StorageTracker() as tracker:
        model = nn.Sequential(nn.Linear(n_in, n_hidden, bias=False), nn.ReLU(), nn.Linear(n_hidden, 1, bias=False))
        w1, w2 = n_in * n_hidden * F32, n_hidden * F32
        assert tracker.live_bytes == w1 + w2
        tracker.mark()
        x = torch.randn(batch, n_in)
        loss = model(x).sum()
        # peak: x, pre-activation h and relu(h) together; h dies after ReLU (its backward keeps
        # the output), the [8, 1] output dies after sum; the loss is a 4-byte scalar.
        assert tracker.peak_bytes == w1 + w2 + x_bytes + 2 * h_bytes
        assert tracker.live_bytes == w1 + w2 + x_bytes + h_bytes + scalar
        start = tracker.live_bytes
        tracker.mark()
        loss.backward()
        # peak: + d(loss) scalar + dW2 + grad of h (replacing the released relu(h)) + dW1
        assert tracker.peak_bytes == start + scalar + w2 + w1
        del loss
        assert tracker.live_bytes == 2 * (w1 + w2) + x_bytes   # weights, their grads, x


def test_label_counts_tensors_made_before_tracking_and_breaks_down_the_peak():
    early = torch.zeros(100)                 # 400 B, made untracked
    with StorageTracker() as tracker:
        tracker.label(early, "frozen_weights")
        assert tracker.live_bytes == 400
        tracker.mark()
        tmp = torch.ones(50)                 # 200 B temporary
        del tmp
        grad = torch.ones(25)                # 100 B, labelled after the peak
        tracker.label(grad, "gradients")
        parts = tracker.breakdown_at_peak()
    assert parts["frozen_weights"] == 400 and parts["activations"] == 200 and parts["gradients"] == 0
    assert sum(parts.values()) == tracker.peak_bytes == 600
