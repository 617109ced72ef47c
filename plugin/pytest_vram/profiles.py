"""GPU profiles: the cards a test can be budgeted for.

Adding a GPU is one entry in ``PROFILES``. ``total_bytes`` is the total the card reports to
CUDA (``torch.cuda.get_device_properties().total_memory``, which equals nvidia-smi's MiB total
x 2**20 where both were seen); ``source`` says where each figure comes from, so that an
estimate is never mistaken for a measurement. ``context_bytes`` is the typical CUDA context
(with lazy module loading, CUDA >= 11.7, ~300 MiB); the allocator does not see it, NVML does.
The attention kernel a card gets is the simulator's business (:mod:`.sim.attention`). A project
adds its own cards with the ``pytest_vram_gpu_profiles`` hook (:mod:`.hookspec`).
"""
from __future__ import annotations

from dataclasses import dataclass

from .sizes import GiB, MiB


@dataclass(frozen=True)
class GpuProfile:
    name: str
    label: str
    total_bytes: int
    compute_capability: tuple[int, int]
    bf16: bool
    source: str
    context_bytes: int = 300 * MiB


def _gib(x: float) -> int:
    return round(x * GiB)


_OOM = "PyTorch OOM messages' 'total capacity', 0.01 GiB resolution"
PROFILES: dict[str, GpuProfile] = {p.name: p for p in (
    GpuProfile("v100", "Tesla V100 16 GB", 16_945_512_448, (7, 0), False,
               "torch total_memory of a V100-SXM2-16GB (16160 MiB)"),
    GpuProfile("t4", "Tesla T4 16 GB", _gib(14.75), (7, 5), False, _OOM),
    GpuProfile("a10g", "NVIDIA A10G 24 GB", _gib(22.20), (8, 6), True, _OOM),
    GpuProfile("rtx3090", "GeForce RTX 3090 24 GB", _gib(23.69), (8, 6), True, _OOM),
    GpuProfile("rtx4090", "GeForce RTX 4090 24 GB", _gib(23.65), (8, 9), True, _OOM),
    GpuProfile("a100_40gb", "A100 40 GB", _gib(39.59), (8, 0), True, _OOM),
    GpuProfile("a100_80gb", "A100 80 GB", _gib(79.15), (8, 0), True, _OOM),
    GpuProfile("l40s", "NVIDIA L40S 48 GB", 46068 * MiB, (8, 9), True,
               "nvidia-smi total of an NVIDIA L40S (46068 MiB)"),
    # NVML totals as published: nvidia-smi's "MiB" total x 2**20 (the figure torch's total_memory
    # reports); the marketed 48 GB / 24 GB (NVIDIA datasheets) are larger because the driver keeps
    # a reserve. Compute capabilities: NVIDIA's CUDA GPUs table (developer.nvidia.com/cuda-gpus).
    GpuProfile("rtx_a6000", "NVIDIA RTX A6000 48 GB", 49140 * MiB, (8, 6), True,
               "nvidia-smi total of an NVIDIA RTX A6000, ECC off (49140 MiB; rig report in "
               "github.com/noonghunna/club-3090 issue #1047)"),
    GpuProfile("a10", "NVIDIA A10 24 GB", 23028 * MiB, (8, 6), True,
               "nvidia-smi total of an NVIDIA A10 (23028 MiB; modal-labs/modal-client PR #2797), equal to "
               "the NVML memoryInfo.Total 24146608128 B printed in mayooot/detect-gpu issue #3"),
    GpuProfile("l4", "NVIDIA L4 24 GB", 23034 * MiB, (8, 9), True,
               "nvidia-smi total of an NVIDIA L4 (23034 MiB; modal-labs/modal-client PR #2797)"),
    GpuProfile("h100_80gb", "H100 80 GB HBM3", 81559 * MiB, (9, 0), True,
               "nvidia-smi total of an H100 80GB HBM3 (81559 MiB)"),
)}


@dataclass(frozen=True)
class NodeProfile:
    """A machine of ``count`` identical GPUs: a GPU profile x count. A test marked with a node
    profile is budgeted per rank: each rank has one card's memory (the GPU profile's total)."""
    name: str
    gpu: str
    count: int

    @property
    def profile(self) -> GpuProfile:
        return PROFILES[self.gpu]

    @property
    def label(self) -> str:
        return f"{self.count}x {self.profile.label}"


# Adding a node is one entry: the name says the card and the count.
NODES: dict[str, NodeProfile] = {n.name: n for n in (
    NodeProfile("t4_x2", "t4", 2),
    NodeProfile("rtx4090_x4", "rtx4090", 4),
    NodeProfile("a100_80gb_x8", "a100_80gb", 8),
    NodeProfile("h100_80gb_x8", "h100_80gb", 8),
)}


def get_node(name: str) -> NodeProfile:
    """The node profile called ``name`` ('a100-80gb-x8' works too)."""
    key = name.strip().lower().replace("-", "_") if isinstance(name, str) else name
    try:
        return NODES[key]
    except (KeyError, TypeError):
        raise ValueError(f"unknown node profile {name!r}; valid choices: {', '.join(NODES)}") from None


def node_for(gpu: str, count: int) -> NodeProfile | None:
    """The node profile of ``count`` x ``gpu``, if there is one."""
    return next((n for n in NODES.values() if n.gpu == gpu and n.count == count), None)


def get_profile(name: str, table: dict[str, GpuProfile] | None = None) -> GpuProfile:
    """The profile called ``name`` ('a100-40gb' and 'a100_40gb' both work) in ``table``
    (default: the built-in :data:`PROFILES`)."""
    table = PROFILES if table is None else table
    key = name.strip().lower().replace("-", "_")
    try:
        return table[key]
    except KeyError:
        raise ValueError(
            f"unknown GPU profile {name!r}; valid choices: {', '.join(table)}"
        ) from None


def with_project_profiles(extra: list) -> dict[str, GpuProfile]:
    """The built-in profiles and a project's (from the ``pytest_vram_gpu_profiles`` hook).
    Raises ValueError for an entry that is not a GpuProfile or whose name is taken."""
    table = dict(PROFILES)
    for profile in extra:
        if not isinstance(profile, GpuProfile):
            raise ValueError(f"pytest_vram_gpu_profiles: expected GpuProfile entries, got {profile!r}")
        if profile.name in table or profile.name in NODES:
            raise ValueError(f"pytest_vram_gpu_profiles: a GPU profile named {profile.name!r} exists "
                             f"already; profiles: {', '.join(table)}; node profiles: {', '.join(NODES)}")
        if not profile.name.isidentifier() or profile.name != profile.name.lower():
            raise ValueError(f"pytest_vram_gpu_profiles: profile name {profile.name!r} must be a "
                             "lower-case identifier (it becomes a marker, e.g. 'l4_24gb')")
        table[profile.name] = profile
    return table
