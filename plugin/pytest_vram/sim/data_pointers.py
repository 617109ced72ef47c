"""Data pointers of simulated device memory: distinct per storage, as an allocator hands them out.

A FakeTensor's storage is a meta storage, whose ``data_ptr()`` is 0 for every tensor. Code that
compares data pointers to decide what to allocate or free then takes the wrong branch. FSDP1
(``torch.distributed.fsdp.FullyShardedDataParallel``) does this in two places:
``_catch_all_reshard`` (torch/distributed/fsdp/_runtime_utils.py, torch 2.13) skips a handle
whose ``flat_param.data_ptr() == flat_param._local_shard.data_ptr()``, and
``_same_storage`` (torch/distributed/fsdp/_flat_param.py) compares
``untyped_storage().data_ptr()``. With every pointer 0 a handle whose post-backward hook did not
reshard it (a frozen flat parameter: a QLoRA base layer, the root) is taken for resharded and
keeps its unsharded flat parameter after backward, where a device run frees it.

While the simulator runs, a storage the tracker counts (the simulated device's memory) reports
an address of its own, nonzero while it holds bytes and 0 once empty (a 0-byte allocation or a
storage ``resize_(0)`` freed: c10's allocators return nullptr then), and a FakeTensor's
``data_ptr()`` is that address plus its offset, 0 when it has no elements (c10/core/TensorImpl.h
``data_impl``: ``if (is_empty()) return nullptr``; else ``data + itemsize * storage_offset``).
The address is the storage's C++ object (``_cdata``): unique among live storages, so two
tensors compare equal exactly when they share memory at the same offset, as on a device.
Other storages (real ones, and meta tensors, which hold no memory) keep torch's answer.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch._subclasses.fake_tensor import FakeTensor


def storage_address(storage: torch.UntypedStorage) -> int:
    """The simulated address of a tracked storage: its C++ object, 0 while it holds no bytes."""
    return storage._cdata if storage.nbytes() else 0


def tensor_address(tensor: torch.Tensor) -> int:
    """``tensor.data_ptr()`` as c10 computes it from its storage's ``data_ptr()``."""
    if tensor.numel() == 0:
        return 0
    return tensor.untyped_storage().data_ptr() + tensor.element_size() * tensor.storage_offset()


@contextlib.contextmanager
def device_addresses(tracker) -> Iterator[None]:
    """Distinct data pointers for the storages ``tracker`` counts, and for every FakeTensor."""
    original = torch.UntypedStorage.data_ptr

    def data_ptr(storage):
        return storage_address(storage) if tracker.holds(storage) else original(storage)

    torch.UntypedStorage.data_ptr = data_ptr
    FakeTensor.data_ptr = tensor_address
    try:
        yield
    finally:
        torch.UntypedStorage.data_ptr = original
        del FakeTensor.data_ptr
