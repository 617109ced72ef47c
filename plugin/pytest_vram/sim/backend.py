"""The ``sim`` backend: the test body runs under FakeTensorMode (fake CPU tensors standing in
for the GPU: fake cuda tensors abort autograd on a CPU-only torch) with the storage tracker
counting every storage, so allocated and peak bytes are exact and no real memory is used.
The mode is torch's own with a cheaper spelling of its dispatch-cache key
(:mod:`.fake_mode`: the same key, built faster).

What differs on the GPU is modelled from the profile, each piece switchable (``gpu_models``):
the code paths torch takes on a CUDA tensor where they differ from the CPU's (composites
that branch on ``is_cuda()``, :mod:`.cuda_composites`; outputs whose dtype the CUDA kernel
picks differently, :mod:`.cuda_kernel_outputs`; autocast's op lists,
:mod:`.autocast_lists`; the optimizer and clipping implementations, :mod:`.optimizers`), the
attention kernel it would pick (:mod:`.attention`), the caching allocator's rounding,
segments and reserved memory (:mod:`.allocator`), the attention and softmax kernels'
transient buffers (:mod:`.attention_workspaces`, :mod:`.softmax_workspaces`), the CUDA
context (the profile's typical size) and the cuBLAS workspace (allocated through the caching
allocator on the first matrix product and kept: 8 MiB + 128 KiB below sm90, 32 MiB on sm90).
With the models off it simulates a CPU target: the same bytes as a real CPU run. A simulated
OOM is raised at the first allocation the emulated card could not hold, as a ``torch.OutOfMemoryError``.

Not modelled, for want of a size that the source fixes: cuDNN convolution workspaces and
allocator fragmentation over many steps (one step is replayed). The workspace does go through
the caching allocator (aten/src/ATen/native/cudnn/Conv_v8.cpp ``run_conv_plan``:
``CUDACachingAllocator::get()->allocate(plan.getWorkspaceSize())``, freed when the call
returns), but its size is that of the execution plan cuDNN's heuristics rank first for the
shape, GPU and cuDNN version (``get_configs_from_heuristics``, ``CUDNN_HEUR_MODE_INSTANT``;
with ``benchmark=True`` the fastest measured plan, filtered by the largest block the allocator
can hand out): nothing in torch's source fixes it, and since engines without a workspace exist
the only floor the source gives is 0 bytes.

Known to differ, not yet replayed: the autograd engine adds the gradients of a tensor used
twice (a residual stream) in place when the buffer is a plain tensor it alone holds
(torch/csrc/autograd/input_buffer.cpp ``can_accumulate_inplace``: "a vanilla Tensor"); a
FakeTensor is tensor-subclass-like, so under the simulator every such sum is ``old + new``, one
gradient-sized transient more than a CUDA run of torch 2.13 makes where the in-place path
applies (older releases added out of place; the release that changed it is not pinned here). It
can only raise a backward peak; its size on the suite's cases is not measured.

Reads of tensor values get host-side stand-ins (:mod:`.value_reads`), on either target.
Libraries that resist fake tensors get a shim while the backend runs, one module each:
:mod:`.bitsandbytes` (quantized parameter classes, code maps), :mod:`.peft` (LoHa/LoKr
module dropout) and :mod:`.transformers` (packed-sequence detection); code that compares data
pointers (FSDP1) reads distinct addresses for distinct storages (:mod:`.data_pointers`).
"""
from __future__ import annotations

import contextlib
import gc

import torch
from torch._subclasses.fake_tensor import FakeTensor, _device_handler

from ..meter import PhaseResult
from ..profiles import GpuProfile
from ..sizes import MiB
from ..tracker import StorageTracker
from .allocator import CachingAllocatorModel, OutOfSimulatedMemory
from .attention import routed_attention
from .attention_workspaces import kernel_temporaries
from .cuda_kernel_outputs import CUDA_OUTPUTS
from .autocast_lists import cuda_autocast
from .bitsandbytes import fake_code_map, fake_quantized_params
from .cuda_composites import cuda_composites
from .data_pointers import device_addresses
from .fake_construction import LIFT_IDS
from .fake_mode import fake_tensors, no_dynamo_guard
from .optimizers import host_scalars, target_implementations
from .peft import host_module_dropout
from .transformers import unpacked_sequences
from .eager_strides import eager_strides
from .value_reads import call_with_host_values

PRIM_DEVICE = torch.ops.prim.device.default
GEMMS = {torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default,
         torch.ops.aten.baddbmm.default}
_GEMM_IDS = frozenset(map(id, GEMMS))
_CUDA_OUTPUT_IDS = frozenset(map(id, CUDA_OUTPUTS))
WORKSPACE_KEY = -1


def cublas_workspace_bytes(profile: GpuProfile) -> int:
    """PyTorch's default cuBLAS workspace (aten/src/ATen/cuda/CublasHandlePool.cpp
    ``parseChosenWorkspaceSize``): ':4096:2:16:8' below sm90, 32 MiB on sm90 and later. The
    cuBLASLt workspace (addmm, linear) is not a second allocation: torch 2.13 unifies it with the
    cuBLAS one by default (``TORCH_CUBLASLT_UNIFIED_WORKSPACE``; torch/backends/cuda
    ``blas_workspace_size``: "physically reuses the same allocation")."""
    return 32 * MiB if profile.compute_capability >= (9, 0) else 2 * 4096 * 1024 + 8 * 16 * 1024


class SimulatedOutOfMemoryError(torch.OutOfMemoryError):
    pass


class _SimTracker(StorageTracker):
    _should_skip_dynamo = classmethod(no_dynamo_guard)

    def __init__(self, backend: "SimBackend"):
        super().__init__(on_alloc=backend._alloc, on_free=backend._free)
        self._backend = backend
        self._fake = None  # the fake mode below, set when the backend starts
        self.host_scalars = False  # inside a torch.optim step: its lifted scalars live on the host

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is PRIM_DEVICE and type(args[0]) is FakeTensor:
            # ``tensor.device`` asked from C++ (half the calls that reach this mode): what the
            # FakeTensorMode below would answer first thing (torch/_subclasses/fake_tensor.py
            # ``FakeTensorMode.dispatch``: ``_DISPATCH_META_HANDLERS[func](args)``, i.e.
            # ``_device_handler``), without passing through it; no storage, no kernel
            return _device_handler(args)
        ident = id(func)  # OpOverload hashes in Python; its id (one object per overload) does not
        if ident in _GEMM_IDS:
            self._backend._first_gemm()
        out = call_with_host_values(func, args, kwargs or {}, self._fake.dispatch_as_below, types)
        if self.host_scalars and ident in LIFT_IDS:
            self.keep_on_host(out)  # sim/optimizers.py host_scalars
            return out
        if ident in _CUDA_OUTPUT_IDS and self._backend.gpu_models:
            out = CUDA_OUTPUTS[func](args, out)
        self.see_outputs(out)
        if self._backend.allocator is not None:
            self._backend._transient(kernel_temporaries(func, args, self._backend.profile.compute_capability))
        return out


class SimBackend:
    name = "sim"
    executes = False
    torch_device = "cpu"

    def __init__(self, profile: GpuProfile | None, gpu_models: bool = True, budget: int | None = None):
        self.profile = profile
        self.gpu_models = gpu_models and profile is not None
        self.context = profile.context_bytes if self.gpu_models else 0
        total = budget if budget is not None else profile.total_bytes if profile else None
        limit = total - self.context if total is not None else None
        self.allocator = CachingAllocatorModel(limit) if self.gpu_models else None
        self.tracker = _SimTracker(self)
        self._limit = limit
        self._workspace = not self.gpu_models  # nothing to allocate for a CPU target
        self._stack = contextlib.ExitStack()
        self._transient_key = WORKSPACE_KEY  # transient buffers take keys below it
        self._streams = [torch.cpu.current_stream()]  # the allocator model's stream numbers: the default is 0

    def start(self) -> None:
        capability = self.profile.compute_capability if self.gpu_models else None
        self._stack.enter_context(routed_attention(capability))
        if self.gpu_models:
            self._stack.enter_context(cuda_composites())
            self._stack.enter_context(cuda_autocast())
        self._stack.enter_context(target_implementations(gpu=self.gpu_models))
        if self.gpu_models:
            self._stack.enter_context(host_scalars(self.tracker))
        self._stack.enter_context(fake_quantized_params())
        self._stack.enter_context(host_module_dropout())
        self._stack.enter_context(unpacked_sequences())
        self._stack.enter_context(eager_strides())
        mode = self._stack.enter_context(fake_tensors())
        self.tracker._fake = mode
        self._stack.enter_context(fake_code_map(mode))
        self._stack.enter_context(self.tracker)
        self._stack.enter_context(device_addresses(self.tracker))

    def stop(self) -> None:
        self._stack.close()

    # -- allocation hooks -----------------------------------------------------------------
    def _alloc(self, key: int, nbytes: int) -> None:
        if self.allocator is not None:
            try:
                self.allocator.malloc(key, nbytes, self._stream_id())
            except OutOfSimulatedMemory as exc:
                raise SimulatedOutOfMemoryError(
                    f"simulated CUDA out of memory on {self.profile.label}: tried to allocate "
                    f"{exc.requested} bytes with {exc.reserved} reserved of {exc.limit} available") from None
        elif self._limit is not None and self.tracker.live_bytes + nbytes > self._limit:
            raise SimulatedOutOfMemoryError(
                f"simulated out of memory: {self.tracker.live_bytes + nbytes} bytes live of {self._limit} available")

    def _stream_id(self) -> int:
        """The current stream, numbered for the allocator model (its blocks are per stream): the
        default stream is 0, any other its order of first use. The fake tensors are CPU tensors, so
        the streams FSDP2 makes for its collectives are ``torch.cpu.Stream`` objects and
        ``torch.cpu.stream(s)`` makes one current, as ``torch.cuda.stream`` would on a GPU."""
        stream = torch.cpu.current_stream()
        for number, known in enumerate(self._streams):
            if known is stream:
                return number
        self._streams.append(stream)
        return len(self._streams) - 1

    def _free(self, key: int) -> None:
        if self.allocator is not None:
            self.allocator.free(key)

    def record_stream(self, tensor: torch.Tensor) -> None:
        """``tensor``'s block is used by another stream (a collective's, as ``recordStream``
        marks it): freed, it waits for the next host synchronization (:mod:`.allocator`)."""
        key = self.tracker.key_of(tensor.untyped_storage())
        if self.allocator is not None and key is not None:
            self.allocator.record_stream(key)

    def synchronize(self) -> None:
        """The host waits for the device (a blocking copy, a barrier)."""
        if self.allocator is not None:
            self.allocator.synchronize()

    def _transient(self, statements: list[list[int]]) -> None:
        """Buffers a CUDA kernel allocates and frees within one call (see
        :mod:`.attention_workspaces`): through the allocator model only, no tensor exists. Per
        statement, all but the last buffer are freed when it ends; the lasts when the call
        returns, in reverse order (C++ destroys locals in reverse)."""
        kept = []
        for sizes in statements:
            keys = []
            for nbytes in sizes:
                self._transient_key -= 1
                keys.append(self._transient_key)
                self._alloc(self._transient_key, nbytes)
            for key in keys[:-1]:
                self._free(key)
            kept.append(keys[-1])
        for key in reversed(kept):
            self._free(key)

    def _first_gemm(self) -> None:
        if not self._workspace:
            self._workspace = True
            self._alloc(WORKSPACE_KEY, cublas_workspace_bytes(self.profile))

    # -- phases ---------------------------------------------------------------------------
    def begin_phase(self) -> None:
        self.tracker.mark()
        if self.allocator is not None:
            self.allocator.reset_peak()

    def end_phase(self, name: str, oom: bool) -> PhaseResult:
        t, a = self.tracker, self.allocator
        breakdown = t.breakdown_at_peak()
        if a is None:
            return PhaseResult(name, t.live_bytes, t.peak_bytes, None, 0, breakdown, oom, t.peak_bytes)
        # the allocator's rounding (and the cuBLAS workspace) count as activations/temporaries
        breakdown["activations"] += a.peak_allocated - sum(breakdown.values())
        return PhaseResult(name, a.allocated, a.peak_allocated, a.peak_reserved, self.context, breakdown, oom,
                           a.peak_requested)

    def release(self) -> None:
        gc.collect()
        if self.allocator is not None:
            self.allocator.empty_cache()

    def held_bytes(self, leftovers) -> int:
        """Memory held before this test starts: what earlier tests left alive (not charged to
        this test's simulated device, which starts empty)."""
        return leftovers.bytes
