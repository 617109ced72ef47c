"""The meter behind the ``vram`` fixture: named phases measured by a backend.

Each phase records, in integer bytes: ``allocated`` at its end, ``peak`` allocated during it,
``reserved`` peak (None where the backend has no caching allocator) and a ``breakdown`` of the
peak by category. An out-of-memory error inside a phase is recorded as OOM at that phase and
turned into :class:`PhaseOOM`; no traceback left behind holds the phase's tensors.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Iterator

import torch

from . import budget as budget_rule
from .profiles import GpuProfile


@dataclass
class PhaseResult:
    name: str
    allocated: int
    peak: int
    reserved: int | None
    context: int
    breakdown: dict[str, int] = field(default_factory=dict)
    oom: bool = False
    # peak of the bytes tensors asked for, before the allocator's rounding (torch's
    # memory_stats()["requested_bytes.all.peak"]); None where the backend cannot tell
    peak_requested: int | None = None

    @property
    def total(self) -> int:
        """What the device must hold: peak reserved (or peak allocated) plus the CUDA context."""
        return (self.reserved if self.reserved is not None else self.peak) + self.context

    def to_dict(self) -> dict:
        data = asdict(self)
        data.pop("name")
        data["total"] = self.total
        return data


class PhaseOOM(Exception):
    """An out-of-memory error happened inside a phase (its memory has been let go)."""


def forget_tracebacks(exc: BaseException | None) -> None:
    """Drop the tracebacks of ``exc`` and of every exception it was raised from or during.

    Clearing a frame's locals is not enough: a finished frame keeps its caller (``f_back``)
    and, since Python 3.11, its function, whose closure (pytest-benchmark's runner) may hold
    the model. And ``raise ... from None`` keeps ``__context__``: the exception that was being
    handled, with its own traceback, stays reachable from the new one.
    """
    pending, seen = [exc], set()
    while pending:
        exc = pending.pop()
        if exc is None or id(exc) in seen:
            continue
        seen.add(id(exc))
        exc.__traceback__ = None
        pending += [exc.__cause__, exc.__context__]


class Meter:
    """The ``vram`` fixture's value."""

    def __init__(self, backend, gpu: GpuProfile | None, budget: int | None):
        self._backend = backend
        self.gpu = gpu.name if gpu else None
        self.profile = gpu
        self.budget = budget
        self.phases: dict[str, PhaseResult] = {}
        self.oom_phase: str | None = None
        self.trainable_params: int | None = None
        self.baseline_bytes: int | None = None  # held on the device when the test started
        self.layout: dict | None = None  # {"ranks", "strategy", "rank"}: one rank of a multi-GPU job

    @property
    def backend(self) -> str:
        return self._backend.name

    @property
    def device(self) -> str:
        """Where the test should put its tensors ("cuda:0", or "cpu" for the cpu and sim backends)."""
        return self._backend.torch_device

    @property
    def executes(self) -> bool:
        """True where the test body really runs (cpu, cuda); False under simulation."""
        return self._backend.executes

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if name in self.phases:
            raise ValueError(f"phase {name!r} was already measured; phases so far: {list(self.phases)}")
        self._backend.begin_phase()
        oom = None
        try:
            yield
        except torch.OutOfMemoryError as exc:
            self.phases[name] = self._backend.end_phase(name, oom=True)
            self.oom_phase = name
            oom = f"out of memory in phase {name!r}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
            forget_tracebacks(exc)
            del exc
        if oom is not None:
            raise PhaseOOM(oom)
        self.phases[name] = self._backend.end_phase(name, oom=False)

    @property
    def streams(self):
        """Where the backend models the caching allocator's blocks shared with another stream
        (the simulator: ``record_stream(tensor)``, ``synchronize()``, pytest_vram/sim/allocator.py),
        that backend; else None (a real device's allocator does it itself)."""
        return self._backend if hasattr(self._backend, "record_stream") else None

    def empty_cache(self) -> None:
        """``torch.cuda.empty_cache()`` where a training script calls it: the caching allocator's
        unused cached blocks go back to the device (the simulator's allocator model likewise)."""
        self._backend.release()

    def parallel(self, ranks: int, strategy: str, rank: int = 0) -> None:
        """Say that this test measures one rank (``rank``) of a ``ranks``-GPU job run with
        ``strategy`` (e.g. "fsdp", "ddp"): the record carries the three. The budget stays what
        one GPU has: every rank holds its own share on its own card."""
        for name, value in (("ranks", ranks), ("rank", rank)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"vram.parallel: {name}={value!r} is not a whole number of ranks")
        if ranks < 1 or rank >= ranks:
            raise ValueError(f"vram.parallel: rank {rank} does not exist in a world of {ranks}; "
                             f"valid choices: 0..{max(ranks - 1, 0)}")
        if not isinstance(strategy, str) or not strategy:
            raise ValueError(f"vram.parallel: strategy {strategy!r} should name the strategy (e.g. 'fsdp')")
        self.layout = {"ranks": ranks, "strategy": strategy, "rank": rank}

    def track(self, model: torch.nn.Module | None = None, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Label the model's weights and, as they appear, its gradients and optimizer state,
        so that phases carry a breakdown. Counts the trainable parameters."""
        tracker = self._backend.tracker
        if model is not None:
            self.trainable_params = 0
            for param in model.parameters():
                if param.requires_grad:
                    self.trainable_params += _model_numel(param)
                    tracker.label(param, "trainable_params")
                    param.register_post_accumulate_grad_hook(lambda p: tracker.label(p.grad, "gradients"))
                else:
                    tracker.label(param, _frozen_category(param))
                    for tensor in _quant_state_tensors(getattr(param, "quant_state", None)):
                        tracker.label(tensor, "quantized_weights")
            for module in model.modules():
                # a sharded 4-bit weight (FSDP+QLoRA) is a plain DTensor of its float storage
                # dtype: its layer keeps the QuantState, and says the weight is quantized
                state, weight = getattr(module, "quant_state", None), getattr(module, "weight", None)
                if state is not None and isinstance(weight, torch.Tensor) and not hasattr(weight, "quant_state"):
                    tracker.label(weight, "quantized_weights")
                    for tensor in _quant_state_tensors(state):
                        tracker.label(tensor, "quantized_weights")
            for buffer in model.buffers():
                tracker.label(buffer, "frozen_weights")
        if optimizer is not None:
            def label_gradients(opt, args, kwargs):
                # gradients assigned without autograd's accumulation (FSDP2's reduce-scatter
                # output, DDP's bucket views) never fire the hook above
                for group in opt.param_groups:
                    for param in group["params"]:
                        tracker.label(param.grad, "gradients")
            optimizer.register_step_pre_hook(label_gradients)

            def label_state(opt, args, kwargs):
                for state in opt.state.values():
                    for value in state.values():
                        if isinstance(value, torch.Tensor):
                            tracker.label(value, "optimizer_state")
            optimizer.register_step_post_hook(label_state)

    @property
    def peak_total(self) -> int:
        return max((p.total for p in self.phases.values()), default=0)

    @property
    def fits(self) -> bool:
        return budget_rule.fits(self.oom_phase, self.peak_total, self.budget)

    @property
    def status(self) -> str:
        return budget_rule.status(self.oom_phase, self.peak_total, self.budget)


def _model_numel(param: torch.Tensor) -> int:
    """How many of the model's parameters ``param`` stands for: its own elements, or for FSDP1's
    FlatParameter (a rank's shard of one unit's parameters flattened together,
    torch/distributed/fsdp/_flat_param.py) those of every parameter it flattens
    (``_unpadded_unsharded_size``), as FSDP2's DTensor ``numel()`` is the global size."""
    size = getattr(param, "_unpadded_unsharded_size", None)
    return size.numel() if isinstance(size, torch.Size) else param.numel()


def _frozen_category(param: torch.Tensor) -> str:
    quantized = hasattr(param, "quant_state") or param.dtype in (torch.int8, torch.uint8)
    return "quantized_weights" if quantized else "frozen_weights"


def _quant_state_tensors(quant_state) -> Iterator[torch.Tensor]:
    """Tensors of a bitsandbytes ``QuantState`` (absmax, code, nested state); none for None."""
    pending = [quant_state]
    while pending:
        state = pending.pop()
        if state is None:
            continue
        for value in vars(state).values():
            if isinstance(value, torch.Tensor):
                yield value
            elif hasattr(value, "__dict__") and type(value).__name__ == type(state).__name__:
                pending.append(value)
