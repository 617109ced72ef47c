"""A dispatch-level storage tracker: exact live and peak bytes of tensor storages.

Every op output passes through ``__torch_dispatch__``; the first time a storage is seen it is
counted, and a weakref callback uncounts it when the storage dies (torch keeps one Python
object per live storage, so the callback fires exactly when the memory is released). Storages
made before tracking started can be added with :meth:`StorageTracker.label`.

A tensor subclass that wraps other tensors (DTensor: a sharded parameter is a wrapper of the
global shape around the rank's local shard) owns no memory of its own: its inner tensors are
counted instead (:func:`plain_tensors`), so a rank is charged its local shard, not the global size.

This runs once per op (tens of thousands per simulated case), so it keeps to plain dicts:
a live storage is found by its ``id()`` (the entry is removed by the storage's own weakref
callback, which runs while the object is being deallocated, so an id is never looked up after
it could be reused), and single-tensor or flat tuple outputs skip the pytree walk.

Each storage carries a category label (default ``activations``: activations and temporaries).
Labels may be set after the fact, so the breakdown at a phase's peak is computed at the end of
the phase by replaying the allocation log up to the peak with the labels known by then.
"""
from __future__ import annotations

import weakref
from collections import Counter
from functools import partial
from typing import Callable

import torch
from torch._subclasses.fake_tensor import FakeTensor as _FAKE
from torch.utils._python_dispatch import TorchDispatchMode, is_traceable_wrapper_subclass
from torch.utils._pytree import tree_leaves

from .schema import CATEGORIES, DEFAULT_CATEGORY


class StorageTracker(TorchDispatchMode):
    """Counts storages created by tensor ops. ``on_alloc(key, nbytes)`` may raise (the
    simulator's OOM) before a storage is counted; ``on_free(key)`` follows its release."""

    def __init__(self, on_alloc: Callable[[int, int], None] | None = None,
                 on_free: Callable[[int], None] | None = None):
        super().__init__()
        self.on_alloc = on_alloc
        self.on_free = on_free
        self.live_bytes = 0
        self.peak_bytes = 0
        self._key_of: dict[int, int] = {}    # id(storage) -> key, live storages only
        self._host: dict[int, weakref.ref] = {}  # id(storage) -> ref: storages in host memory, never counted
        self._refs: dict[int, weakref.ref] = {}  # key -> weakref whose callback uncounts it
        self._sizes: dict[int, int] = {}   # key -> nbytes, live storages only
        self._labels: dict[int, str] = {}  # key -> category, kept after death
        self._next_key = 0
        self._log: list[tuple[int, int]] = []  # (key, +nbytes / -nbytes) since mark()
        self._mark_sizes: dict[int, int] = {}
        self._peak_index = 0

    # -- storage resizing -----------------------------------------------------------------
    def __enter__(self):
        """Also watch ``UntypedStorage.resize_``: FSDP2 frees an all-gathered parameter by
        resizing its storage to 0 and re-allocates it by resizing it back (``free_storage`` /
        ``alloc_storage`` in torch/distributed/fsdp/_fully_shard/_fsdp_param.py), never through
        a tensor op; on the GPU each is a free and a new block from the caching allocator."""
        original = torch.UntypedStorage.resize_
        tracker = self

        def resize_(storage, size):
            key = tracker._key_of.get(id(storage))
            if key is not None:
                tracker._resized(key, int(size))
            return original(storage, size)

        self._restore_resize = original
        torch.UntypedStorage.resize_ = resize_
        return super().__enter__()

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            torch.UntypedStorage.resize_ = self._restore_resize

    def _resized(self, key: int, nbytes: int) -> None:
        old = self._sizes.get(key, 0)
        if old == nbytes:
            return
        if old:
            self._sizes[key] = 0
            self._change(key, -old)
            if self.on_free is not None:
                self.on_free(key)
        if nbytes:
            if self.on_alloc is not None:
                self.on_alloc(key, nbytes)
            self._sizes[key] = nbytes
            self._change(key, nbytes)

    # -- dispatch -------------------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.see_outputs(out)
        return out

    def see_outputs(self, out) -> None:
        """Count the storages of an op's outputs (a wrapper subclass by its inner tensors)."""
        for leaf in output_leaves(out):
            if isinstance(leaf, torch.Tensor):
                for plain in plain_tensors(leaf):
                    if plain.device.type != "meta":  # meta holds no memory
                        self.see(plain)

    def see(self, tensor: torch.Tensor) -> int:
        """Count ``tensor``'s storage if it is new; return its key. ``tensor`` holds its own
        storage (not a wrapper subclass: see :func:`plain_tensors`)."""
        storage = tensor.untyped_storage()
        ident = id(storage)
        key = self._key_of.get(ident)
        if key is not None:
            return key
        nbytes = storage.nbytes()
        key = self._next_key
        if self.on_alloc is not None:
            self.on_alloc(key, nbytes)
        self._next_key += 1
        self._key_of[ident] = key
        self._refs[key] = weakref.ref(storage, partial(self._died, ident, key))
        self._sizes[key] = nbytes
        self._change(key, nbytes)
        return key

    def holds(self, storage: torch.UntypedStorage) -> bool:
        """Whether ``storage`` is one this tracker counts (live, seen through an op or a label)."""
        return id(storage) in self._key_of

    def key_of(self, storage: torch.UntypedStorage) -> int | None:
        """The key ``storage`` is counted under (the allocation hooks' key), or None."""
        return self._key_of.get(id(storage))

    def _died(self, ident: int, key: int, _ref: weakref.ref) -> None:
        del self._key_of[ident]
        del self._refs[key]
        self._free(key)

    def _free(self, key: int) -> None:
        nbytes = self._sizes.pop(key, 0)
        self._change(key, -nbytes)
        if self.on_free is not None:
            self.on_free(key)

    def _change(self, key: int, delta: int) -> None:
        self.live_bytes += delta
        self._log.append((key, delta))
        if self.live_bytes > self.peak_bytes:
            self.peak_bytes = self.live_bytes
            self._peak_index = len(self._log)

    # -- labels and phases ----------------------------------------------------------------
    def label(self, tensor: torch.Tensor | None, category: str) -> None:
        """Put ``tensor``'s storage in ``category`` (counting it if it was made untracked). A
        meta tensor holds no memory and is not counted (as in :meth:`see_outputs`): FSDP2's CPU
        offload keeps host state on meta under the simulator (fixtures/offload.py)."""
        if tensor is None:
            return
        if category not in CATEGORIES:
            raise ValueError(f"unknown category {category!r}; valid choices: {', '.join(CATEGORIES)}")
        for plain in plain_tensors(tensor):
            if plain.device.type != "meta" and id(plain.untyped_storage()) not in self._host:
                self._labels[self.see(plain)] = category

    def keep_on_host(self, tensor: torch.Tensor) -> None:
        """``tensor``'s storage stands for host memory (the simulator: a fake tensor that a GPU
        run keeps on the CPU): never counted, not when labelled either. One not yet counted."""
        ident = id(tensor.untyped_storage())
        if ident not in self._key_of and ident not in self._host:
            self._host[ident] = weakref.ref(tensor.untyped_storage(), lambda _ref: self._host.pop(ident, None))

    def mark(self) -> None:
        """Start a new phase: the peak restarts from what is live now."""
        self.peak_bytes = self.live_bytes
        self._log = []
        self._mark_sizes = dict(self._sizes)
        self._peak_index = 0

    def _by_category(self, sizes: dict[int, int]) -> dict[str, int]:
        totals = Counter({c: 0 for c in CATEGORIES})
        for key, nbytes in sizes.items():
            totals[self._labels.get(key, DEFAULT_CATEGORY)] += nbytes
        return {c: int(totals[c]) for c in CATEGORIES}

    def sizes_at_peak(self) -> dict[int, int]:
        """key -> bytes of every storage live at the peak since :meth:`mark`."""
        sizes = dict(self._mark_sizes)
        for key, delta in self._log[: self._peak_index]:
            if delta >= 0:
                sizes[key] = delta
            else:
                sizes.pop(key, None)
        return sizes

    def allocations(self) -> list[int]:
        """Bytes of every storage allocated since :meth:`mark`, in order."""
        return [delta for _, delta in self._log if delta > 0]

    def breakdown_at_peak(self) -> dict[str, int]:
        """Bytes per category at the peak since :meth:`mark`; the parts sum to the peak."""
        return self._by_category(self.sizes_at_peak())

    def live_storages(self) -> list[tuple[object, int]]:
        """(storage, bytes) of every counted storage still alive."""
        live = [(ref(), self._sizes[key]) for key, ref in list(self._refs.items()) if key in self._sizes]
        return [(storage, nbytes) for storage, nbytes in live if storage is not None]


def output_leaves(out) -> tuple | list:
    """The leaves of an op's output in ``tree_leaves`` order: a tensor alone, a plain tuple or
    list with no nested containers as it is (most ops), anything else through the pytree walk."""
    if isinstance(out, torch.Tensor):
        return (out,)
    if type(out) in (tuple, list) and not any(isinstance(x, (tuple, list, dict)) for x in out):
        return out
    return tree_leaves(out)


def plain_tensors(tensor: torch.Tensor) -> list[torch.Tensor]:
    """The tensors that hold ``tensor``'s memory: itself, or for a wrapper subclass (DTensor,
    whose own storage is a placeholder of the global shape) its inner tensors, recursively.
    The simulator's FakeTensor and a plain tensor, which define no ``__tensor_flatten__``, are
    answered without torch's protocol check (two ``hasattr`` misses a tensor, per op)."""
    kind = type(tensor)
    if kind is _FAKE or kind is torch.Tensor or not is_traceable_wrapper_subclass(tensor):
        return [tensor]
    names, _ = tensor.__tensor_flatten__()
    inner = (getattr(tensor, name) for name in names)  # DTensor also lists its (tensor-less) mesh
    return [plain for t in inner if isinstance(t, torch.Tensor) for plain in plain_tensors(t)]


class Leftovers:
    """Storages that finished tests left alive (weakly held): what the next test starts with,
    for backends without a device-wide counter (cpu, sim)."""

    def __init__(self):
        self._storages: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def keep(self, tracker: StorageTracker) -> None:
        self._storages.update(tracker.live_storages())

    @property
    def bytes(self) -> int:
        return sum(self._storages.values())
