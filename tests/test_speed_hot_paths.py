"""The tracker's and allocator model's fast paths keep what they compute: the same leaves in
the same order as torch's pytree, a storage counted once while alive and again if a new one
takes a dead one's id, and an allocator whose free lists always match its segments."""
import random

import pytest
import torch
from torch.utils._pytree import tree_leaves

from pytest_vram.sim.allocator import CachingAllocatorModel
from pytest_vram.tracker import StorageTracker, output_leaves

MiB = 2**20


@pytest.mark.parametrize("out", [
    torch.ones(2),
    (torch.ones(1), None, torch.ones(2), 3),
    [torch.ones(1), torch.ones(2)],
    (torch.ones(1), (torch.ones(2), [torch.ones(3)]), {"a": torch.ones(4)}),
    torch.max(torch.ones(2, 3), dim=1),       # a structseq: torch.return_types.max
    None, 7, (),
], ids=["tensor", "flat-tuple", "list", "nested", "structseq", "none", "int", "empty"])
def test_output_leaves_are_tree_leaves_in_order(out):
    got = [id(x) for x in output_leaves(out) if isinstance(x, torch.Tensor)]
    assert got == [id(x) for x in tree_leaves(out) if isinstance(x, torch.Tensor)]


def test_a_new_storage_with_a_dead_ones_id_is_counted_as_new():
    tracker = StorageTracker()
    for n in range(1, 301):
        t = torch.empty(n, dtype=torch.uint8)
        tracker.see(t)
        assert tracker.live_bytes == n      # the storage before it (maybe at the same id) is gone
        del t
        assert tracker.live_bytes == 0
    assert tracker.peak_bytes == 300
    assert len(tracker._sizes) == 0 and len(tracker._key_of) == 0 and len(tracker._refs) == 0


def test_a_storage_is_counted_once_while_alive():
    tracker = StorageTracker()
    t = torch.empty(100, dtype=torch.uint8)
    key = tracker.see(t)
    assert tracker.see(t[10:]) == key       # a view: the same storage
    assert tracker.live_bytes == 100
    assert tracker.live_storages() == [(t.untyped_storage(), 100)]


def _check_consistent(a: CachingAllocatorModel) -> None:
    """Blocks tile each segment; the free lists hold exactly the free blocks; the totals add up."""
    free: dict = {}
    allocated = 0
    for seg in a.segments:
        assert [b[0] for b in seg.blocks] == sorted(b[0] for b in seg.blocks)
        assert sum(b[1] for b in seg.blocks) == seg.size
        assert all(left[0] + left[1] == right[0] for left, right in zip(seg.blocks, seg.blocks[1:]))
        assert not any(left[2] and right[2] for left, right in zip(seg.blocks, seg.blocks[1:]))  # merged
        for b in seg.blocks:
            if b[2]:
                free.setdefault((seg.small, seg.stream), []).append((b[1], seg.base + b[0]))
            else:
                allocated += b[1]
    for pool in set(free) | set(a._free):
        assert a._free.get(pool, []) == sorted(free.get(pool, []))
        assert all((a._free_segment[address].small, a._free_segment[address].stream) == pool
                   for _, address in a._free.get(pool, []))
    assert len(a._free_segment) == sum(len(blocks) for blocks in a._free.values())
    assert a.allocated == allocated
    assert a.reserved == sum(seg.size for seg in a.segments)


def test_random_mallocs_and_frees_keep_the_model_consistent():
    rng = random.Random(0)
    a = CachingAllocatorModel(limit=None)
    live = []
    for key in range(3000):
        if live and rng.random() < 0.45:
            a.free(live.pop(rng.randrange(len(live))))
        else:
            size = rng.choice([rng.randint(1, 4096), rng.randint(1, 2 * MiB), rng.randint(1, 40 * MiB)])
            a.malloc(key, size)
            live.append(key)
        if key % 500 == 0:
            a.empty_cache()
        if key % 100 == 0:
            _check_consistent(a)
    for key in live:
        a.free(key)
    _check_consistent(a)
    assert a.allocated == 0 and a.requested == 0
    a.empty_cache()
    assert a.reserved == 0 and a.segments == []


def test_device_queries_are_answered_above_the_fake_mode(monkeypatch):
    """``prim.device`` (C++ asking a fake tensor its device: about half of what reaches the
    simulator's tracker) is answered by the tracker with torch's own handler, the fake mode's
    dispatch not entered; the answer is the fake device."""
    from pytest_vram.profiles import get_profile
    from pytest_vram.sim.backend import SimBackend
    from pytest_vram.sim.fake_mode import SimFakeTensorMode

    reached = []
    dispatch = SimFakeTensorMode.dispatch
    monkeypatch.setattr(SimFakeTensorMode, "dispatch", lambda self, func, *a, **k: (
        reached.append(func), dispatch(self, func, *a, **k))[1])
    backend = SimBackend(get_profile("v100"))
    backend.start()
    try:
        t = torch.empty(3)
        reached.clear()
        assert torch.ops.prim.device.default(t) == torch.device("cpu")
        assert reached == []
        torch.ops.aten.neg.default(t)
        assert reached == [torch.ops.aten.neg.default]
    finally:
        backend.stop()


def test_compile_is_deferred_to_the_first_call_with_the_same_options(monkeypatch):
    """bitsandbytes' import-time ``torch.compile`` (both its forms) compiles nothing until the
    kernel is first called, then compiles once, with the options given, and calls the result."""
    from pytest_vram.sim.bitsandbytes import compile_on_first_call

    compiled = []

    def real_compile(fn, **options):
        compiled.append((fn.__name__, options))
        return lambda *args, **kwargs: ("compiled", fn(*args, **kwargs))

    monkeypatch.setattr(torch, "compile", real_compile)
    with compile_on_first_call():
        def kernel(x, scale=1):
            return x * scale

        direct = torch.compile(kernel, dynamic=False)
        decorated = torch.compile(dynamic=True)(kernel)
    assert torch.compile is real_compile and compiled == []
    assert direct(2, scale=3) == ("compiled", 6) and direct(1) == ("compiled", 1)
    assert decorated(4) == ("compiled", 4)
    assert compiled == [("kernel", {"dynamic": False}), ("kernel", {"dynamic": True})]
    assert direct.__name__ == "kernel"


def test_the_simulators_modes_run_without_the_dynamo_guard():
    """The simulator's two dispatch modes opt out of torch's per-op ``_disable_dynamo`` wrapper
    (nothing is compiled under them); the cpu/cuda backends' tracker keeps it."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from pytest_vram.sim.backend import _SimTracker
    from pytest_vram.sim.fake_mode import SimFakeTensorMode

    # torch's own function, under neither the dynamo guard nor torch/utils/_stats.py's @count
    guarded = FakeTensorMode.__dict__["__torch_dispatch__"]
    assert SimFakeTensorMode.__torch_dispatch__ is guarded.__wrapped__.__wrapped__
    assert not hasattr(SimFakeTensorMode.__torch_dispatch__, "__wrapped__")
    assert _SimTracker.__torch_dispatch__.__module__ == "pytest_vram.sim.backend"
    assert not hasattr(_SimTracker.__dict__["__torch_dispatch__"], "__wrapped__")
    assert hasattr(StorageTracker.__dict__["__torch_dispatch__"], "__wrapped__")  # torch's guard, kept
