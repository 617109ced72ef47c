"""A model of PyTorch's CUDA caching allocator (c10/cuda/CUDACachingAllocator.cpp), enough to
predict reserved memory and where an allocation would run out of memory.

- Every request is rounded up to a multiple of 512 bytes.
- Requests up to 1 MiB come from the small pool, carved out of 2 MiB segments; larger ones
  from the large pool: a 20 MiB segment for requests under 10 MiB, else the request rounded up
  to 2 MiB.
- A free cached block is reused best-fit within its pool, the lowest address first among
  blocks of one size (segments get increasing simulated addresses, so the choice never
  depends on where Python put an object); a block is split when the remainder
  is at least 512 bytes (small pool) or over 1 MiB (large pool); freed blocks merge with free
  neighbours in their segment.
- A segment belongs to the stream that was current when it was allocated, and its blocks are
  reused only by requests on that stream (``get_free_block``: ``(*it)->stream != p.stream()``
  is no fit): memory a collective's stream cached (FSDP2's all-gather and reduce-scatter
  buffers) is not there for the default stream's activations, and the other way round.
- ``requested`` counts the bytes asked for, before rounding (torch's ``requested_bytes``
  statistic); ``allocated`` the blocks handed out (``allocated_bytes``).
- When a new segment would pass the device limit, the cached free segments are released
  (``empty_cache``) and the allocation retried once; then it is an OOM.
- A block recorded as used by another stream (``record_stream``: ``recordStream`` adds the
  stream to the block's ``stream_uses``) is, when freed, no longer allocated but not free either:
  ``free`` records an event on each of those streams (``insert_events``) and the block returns
  to its pool only once they have completed (``process_events``, at the start of each
  ``malloc``). The model has no clock: the host is taken to run ahead of the device until it
  waits for it, so a recorded block comes back at the next host synchronization
  (:meth:`CachingAllocatorModel.synchronize`); ``empty_cache`` synchronizes first, as
  ``release_cached_blocks`` does (``synchronize_and_free_events``).

It runs on every simulated allocation and free, so lookups are binary searches: a segment's
blocks are found by offset (offsets in a segment are unique and kept sorted) and a pool's free
blocks are plain ``(size, address)`` tuples, with the segment of each free block in a dict.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from ..sizes import MiB
MIN_BLOCK = 512
SMALL_SIZE = 1 * MiB
SMALL_BUFFER = 2 * MiB
LARGE_BUFFER = 20 * MiB
MIN_LARGE_ALLOC = 10 * MiB
ROUND_LARGE = 2 * MiB


def round_size(nbytes: int) -> int:
    return max(MIN_BLOCK, -(-nbytes // MIN_BLOCK) * MIN_BLOCK)


def segment_size(size: int) -> int:
    if size <= SMALL_SIZE:
        return SMALL_BUFFER
    if size < MIN_LARGE_ALLOC:
        return LARGE_BUFFER
    return -(-size // ROUND_LARGE) * ROUND_LARGE


@dataclass(eq=False)
class _Segment:
    size: int
    small: bool
    base: int  # simulated device address
    blocks: list = field(default_factory=list)  # [offset, size, free] sorted by offset
    stream: int = 0  # the stream it was allocated on (0: the default stream)


class OutOfSimulatedMemory(Exception):
    def __init__(self, requested: int, reserved: int, limit: int):
        self.requested, self.reserved, self.limit = requested, reserved, limit
        super().__init__(f"tried to allocate {requested} bytes with {reserved} bytes reserved of {limit}")


class CachingAllocatorModel:
    def __init__(self, limit: int | None):
        self.limit = limit
        self.segments: list[_Segment] = []
        self.reserved = 0
        self.peak_reserved = 0
        self.allocated = 0          # bytes in blocks handed out (rounded, unsplit remainders included)
        self.peak_allocated = 0
        self.requested = 0          # bytes asked for, unrounded (requested_bytes)
        self.peak_requested = 0
        self._free: dict[tuple[bool, int], list] = {}  # (small pool?, stream) -> sorted [(size, address)]
        self._free_segment: dict[int, _Segment] = {}  # address of a free block -> its segment
        self._where: dict[int, tuple[_Segment, int, int]] = {}
        self._next_address = 0
        self._recorded: set[int] = set()  # live keys used by another stream (record_stream)
        self._pending: list[tuple[_Segment, int]] = []  # freed, waiting for those streams

    def reset_peak(self) -> None:
        self.peak_reserved = self.reserved
        self.peak_allocated = self.allocated
        self.peak_requested = self.requested

    def malloc(self, key: int, nbytes: int, stream: int = 0) -> None:
        size = round_size(nbytes)
        small = size <= SMALL_SIZE
        found = self._take_free(small, size, stream)
        if found is None:
            seg_size = segment_size(size)
            if self.limit is not None and self.reserved + seg_size > self.limit:
                self.empty_cache()
                if self.reserved + seg_size > self.limit:
                    raise OutOfSimulatedMemory(size, self.reserved, self.limit)
            seg = _Segment(seg_size, small, self._next_address, [[0, seg_size, True]], stream)
            self._next_address += seg_size
            self.segments.append(seg)
            self.reserved += seg_size
            self.peak_reserved = max(self.peak_reserved, self.reserved)
            found = (seg, 0)
        seg, offset = found
        block_size = self._split(seg, offset, size)
        self._where[key] = (seg, offset, block_size, nbytes)
        self.allocated += block_size
        self.peak_allocated = max(self.peak_allocated, self.allocated)
        self.requested += nbytes
        self.peak_requested = max(self.peak_requested, self.requested)

    def free(self, key: int) -> None:
        located = self._where.pop(key, None)
        if located is None:
            return
        seg, offset, block_size, nbytes = located
        self.allocated -= block_size
        self.requested -= nbytes
        if key in self._recorded:
            self._recorded.discard(key)
            self._pending.append((seg, offset))
            return
        self._release(seg, offset)

    def record_stream(self, key: int) -> None:
        """The live block ``key`` is used by another stream: when freed it waits for it."""
        if key in self._where:
            self._recorded.add(key)

    def synchronize(self) -> None:
        """The host waited for the device: every freed block that waited for a stream returns
        to its pool, in the order freed."""
        pending, self._pending = self._pending, []
        for seg, offset in pending:
            self._release(seg, offset)

    def _release(self, seg: _Segment, offset: int) -> None:
        """A freed block back in its pool, merged with its free neighbours."""
        index = _block_index(seg, offset)
        seg.blocks[index][2] = True
        # merge with free neighbours
        for i in (index + 1, index):
            if 0 < i < len(seg.blocks) and seg.blocks[i - 1][2] and seg.blocks[i][2]:
                left, right = seg.blocks[i - 1], seg.blocks.pop(i)
                self._unlist(seg, left)
                self._unlist(seg, right)
                left[1] += right[1]
        merged = seg.blocks[bisect.bisect_right(seg.blocks, offset, key=_offset) - 1]  # the block holding offset
        self._unlist(seg, merged)
        self._list(seg, merged)

    def empty_cache(self) -> None:
        self.synchronize()
        keep = []
        for seg in self.segments:
            if len(seg.blocks) == 1 and seg.blocks[0][2]:
                self._unlist(seg, seg.blocks[0])
                self.reserved -= seg.size
            else:
                keep.append(seg)
        self.segments = keep

    # -- internals ------------------------------------------------------------------------
    def _take_free(self, small: bool, size: int, stream: int):
        pool = self._free.get((small, stream), ())
        i = bisect.bisect_left(pool, (size, -1))
        if i == len(pool):
            return None
        _, address = pool.pop(i)
        seg = self._free_segment.pop(address)
        return seg, address - seg.base

    def _list(self, seg: _Segment, block) -> None:
        address = seg.base + block[0]
        bisect.insort(self._free.setdefault((seg.small, seg.stream), []), (block[1], address))
        self._free_segment[address] = seg

    def _unlist(self, seg: _Segment, block) -> None:
        pool = self._free.get((seg.small, seg.stream), [])
        entry = (block[1], seg.base + block[0])
        i = bisect.bisect_left(pool, entry)
        if i < len(pool) and pool[i] == entry:
            pool.pop(i)
            del self._free_segment[entry[1]]

    def _split(self, seg: _Segment, offset: int, size: int) -> int:
        """Hand out the block at ``offset``, splitting off the rest if it is large enough;
        returns the size of the block handed out."""
        index = _block_index(seg, offset)
        block = seg.blocks[index]
        remaining = block[1] - size
        splittable = remaining >= MIN_BLOCK if seg.small else remaining > SMALL_SIZE
        block[2] = False
        if splittable:
            block[1] = size
            rest = [offset + size, remaining, True]
            seg.blocks.insert(index + 1, rest)
            self._list(seg, rest)
        return block[1]


def _offset(block) -> int:
    return block[0]


def _block_index(seg: _Segment, offset: int) -> int:
    """Index of the block starting at ``offset`` in ``seg``."""
    return bisect.bisect_left(seg.blocks, offset, key=_offset)
