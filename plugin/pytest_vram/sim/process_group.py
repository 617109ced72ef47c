"""A fake process group: one process plays one rank of an N-rank job.

PyTorch ships a process group for exactly this (``torch.testing._internal.distributed.fake_pg``,
backend ``"fake"``): every collective returns at once without moving data, while the code that
calls it (FSDP2, DDP) allocates its buffers as it would on a real rank - all-gather outputs,
reduce-scatter inputs, gradient buckets. Under the simulator's FakeTensorMode those buffers are
fake and counted by the storage tracker, so a rank's memory is simulated without N GPUs.

This knows no model: it only sets up ``torch.distributed`` (world size, which rank is measured)
and a 1-D device mesh over the ranks, and tears both down afterwards.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch.distributed as dist


def check_world(world_size: int, rank: int = 0) -> None:
    """One clear error for a world size or rank that cannot be."""
    if not isinstance(world_size, int) or isinstance(world_size, bool) or world_size < 1:
        raise ValueError(f"world size {world_size!r} is not a positive whole number of ranks")
    if not isinstance(rank, int) or isinstance(rank, bool) or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank!r} does not exist in a world of {world_size}; "
                         f"valid choices: 0..{world_size - 1}")


@contextlib.contextmanager
def fake_process_group(world_size: int, rank: int = 0, device: str = "cpu") -> Iterator:
    """Initialize the default process group with the fake backend as rank ``rank`` of
    ``world_size`` and yield a 1-D DeviceMesh over all ranks (what ``fully_shard`` and DDP
    take). Works inside the simulator's fake-tensor mode. Refuses to run inside an already initialized process group."""
    check_world(world_size, rank)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.testing._internal.distributed.fake_pg import FakeStore
    from torch.utils._python_dispatch import _disable_current_modes

    if dist.is_initialized():
        raise RuntimeError("a torch.distributed process group is already initialized; "
                           "the fake process group needs the process to itself")
    dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=world_size)
    try:
        # the mesh's rank table is a host tensor, real even while the simulator's fake mode
        # runs (it is read with .tolist()), and no device memory
        with _disable_current_modes():
            mesh = init_device_mesh(device, (world_size,))
        yield mesh
    finally:
        dist.destroy_process_group()
