"""The caching-allocator model against the rules of c10/cuda/CUDACachingAllocator.cpp."""
import pytest

from pytest_vram.sim.allocator import CachingAllocatorModel, OutOfSimulatedMemory, round_size, segment_size

MiB = 2**20


@pytest.mark.parametrize("request_bytes, rounded", [(1, 512), (512, 512), (513, 1024), (4 * MiB + 1, 4 * MiB + 512)])
def test_requests_round_up_to_512_bytes(request_bytes, rounded):
    assert round_size(request_bytes) == rounded


@pytest.mark.parametrize("size, segment", [
    (512, 2 * MiB), (MiB, 2 * MiB),                 # small pool: 2 MiB segments
    (MiB + 512, 20 * MiB), (10 * MiB - 512, 20 * MiB),  # large requests under 10 MiB: 20 MiB
    (10 * MiB, 10 * MiB), (11 * MiB, 12 * MiB),     # else rounded up to 2 MiB
])
def test_segment_sizes(size, segment):
    assert segment_size(size) == segment


def test_small_blocks_share_a_segment_and_freed_blocks_are_reused():
    a = CachingAllocatorModel(limit=None)
    for key in range(4):
        a.malloc(key, 1000)                   # 1024 each, carved from one 2 MiB segment
    assert a.reserved == 2 * MiB and a.allocated == 4 * 1024
    a.free(1)
    a.free(2)                                 # merge into one 2 KiB free block
    a.malloc(9, 2048)                         # best fit: exactly the merged block
    assert a._where[9][1] == 1024
    assert a.reserved == 2 * MiB and a.allocated == 2 * 1024 + 2048


def test_large_block_splits_only_when_the_rest_is_over_1_mib():
    a = CachingAllocatorModel(limit=None)
    a.malloc(0, 3 * MiB)                      # 20 MiB segment, split: 17 MiB stay free
    a.malloc(1, 16 * MiB + 512 * 1024)        # best fit in the 17 MiB rest; 0.5 MiB rest not split
    assert a.reserved == 20 * MiB
    assert a.allocated == 3 * MiB + 17 * MiB  # the unsplit remainder counts as allocated
    assert a.peak_allocated == a.allocated


def test_oom_only_after_releasing_cached_segments():
    a = CachingAllocatorModel(limit=40 * MiB)
    a.malloc(0, 30 * MiB)
    a.free(0)                                 # cached, still reserved
    a.malloc(1, 38 * MiB)                     # needs the cache released first
    assert a.reserved == 38 * MiB and a.peak_reserved == 38 * MiB
    with pytest.raises(OutOfSimulatedMemory):
        a.malloc(2, 4 * MiB)


def test_best_fit_ties_go_to_the_lowest_address_whatever_the_creation_order():
    a = CachingAllocatorModel(None)
    for key in range(3):                     # three 12 MiB segments, at 0, 12 and 24 MiB
        a.malloc(key, 12 * MiB)
    a.free(2)
    a.free(0)                                # two equal free segments; the later-freed is lower
    a.malloc(10, 12 * MiB)
    seg, offset, *_ = a._where[10]
    assert seg is a.segments[0] and seg.base == 0 and offset == 0


def test_a_block_is_reused_only_on_the_stream_that_allocated_its_segment():
    """get_free_block: a cached block of another stream is no fit (c10/cuda/CUDACachingAllocator.cpp)."""
    a = CachingAllocatorModel(limit=None)
    a.malloc(0, 30 * MiB, stream=1)           # e.g. an all-gather output on a collective's stream
    a.free(0)
    a.malloc(1, 30 * MiB)                     # the default stream cannot take it: a new segment
    assert a.reserved == 60 * MiB
    a.free(1)
    a.malloc(2, 30 * MiB, stream=1)           # its own stream takes its block back
    a.malloc(3, 30 * MiB, stream=0)
    assert a.reserved == 60 * MiB and a._where[2][0].stream == 1 and a._where[3][0].stream == 0


def test_a_block_recorded_on_another_stream_waits_for_the_host_to_synchronize():
    """free() of a block with stream_uses: no longer allocated, but its events (insert_events) must
    complete before it is reused (process_events); the model's clock is the host's waits."""
    a = CachingAllocatorModel(limit=None)
    a.malloc(0, 30 * MiB)                     # e.g. the flat tensor a broadcast reads
    a.record_stream(0)
    a.free(0)
    assert a.allocated == 0 and a.requested == 0 and a.reserved == 30 * MiB
    a.malloc(1, 30 * MiB)                     # still in use by the other stream: a new segment
    assert a.reserved == 60 * MiB
    a.free(1)                                 # not recorded: back in the pool at once
    a.malloc(2, 30 * MiB)
    assert a._where[2][0] is a.segments[1]
    a.synchronize()                           # the host waited: the first block is free again
    a.malloc(3, 30 * MiB)
    assert a.reserved == 60 * MiB and a._where[3][0] is a.segments[0]
    a.free(3)                                 # a new block of the same memory is not recorded
    a.malloc(4, 30 * MiB)
    assert a.reserved == 60 * MiB


def test_empty_cache_waits_for_recorded_blocks_first():
    """release_cached_blocks begins with synchronize_and_free_events (CUDACachingAllocator.cpp)."""
    a = CachingAllocatorModel(limit=None)
    a.malloc(0, 30 * MiB)
    a.record_stream(0)
    a.free(0)
    a.empty_cache()
    assert a.reserved == 0


def test_the_simulator_allocates_on_the_current_stream():
    """Under the simulator the current stream is torch.cpu's (the fake tensors are CPU tensors),
    the one FSDP2's collectives enter with ``device_handle.stream(...)``."""
    import torch

    from pytest_vram.profiles import get_profile
    from pytest_vram.sim.backend import SimBackend

    backend = SimBackend(get_profile("a100_80gb"))
    backend.start()
    try:
        side = torch.cpu.Stream()
        with torch.cpu.stream(side):
            buffer = torch.empty(30 * MiB, dtype=torch.uint8)
        del buffer
        activations = torch.empty(30 * MiB, dtype=torch.uint8)
        reserved_apart = backend.allocator.reserved
        del activations
        with torch.cpu.stream(side):
            again = torch.empty(30 * MiB, dtype=torch.uint8)
        reserved_after = backend.allocator.reserved
        del again
    finally:
        backend.stop()
    assert reserved_apart == 60 * MiB and reserved_after == reserved_apart


def test_the_backend_records_and_synchronizes_through_the_meter_under_the_simulator_only():
    """``Meter.streams`` is the sim backend (its allocator model keeps a recorded block until
    ``synchronize``); the cpu backend has no caching allocator to model: None."""
    import torch

    from pytest_vram.backends import CpuBackend
    from pytest_vram.meter import Meter
    from pytest_vram.profiles import get_profile
    from pytest_vram.sim.backend import SimBackend

    assert Meter(CpuBackend(None), None, None).streams is None
    backend = SimBackend(get_profile("rtx3090"))
    streams = Meter(backend, get_profile("rtx3090"), None).streams
    backend.start()
    try:
        flat = torch.empty(30 * MiB, dtype=torch.uint8)
        streams.record_stream(flat)
        del flat
        held = torch.empty(30 * MiB, dtype=torch.uint8)   # the recorded block is not free yet: a new segment
        assert backend.allocator.reserved == 60 * MiB
        streams.synchronize()
        again = torch.empty(30 * MiB, dtype=torch.uint8)  # the first block, free again
        assert backend.allocator.reserved == 60 * MiB and held.shape == again.shape
    finally:
        backend.stop()
