"""Host-side stand-ins for reading a fake tensor's values.

A fake tensor has shapes, no values. Training loops read values on the host all the time:
``loss.item()`` for logging, ``bool(t)`` / ``float(t)``, ``GradScaler.step`` (its inf check
``found_inf.item()``, torch/amp/grad_scaler.py ``_maybe_opt_step``), ``.tolist()``, and ops
whose output shape depends on the values, such as ``nonzero`` (diffusers' schedulers'
``index_for_timestep``: ``(schedule == t).nonzero()`` then ``.item()``). Under FakeTensorMode
these raise ``DataDependentOutputException`` / ``DynamicOutputShapeException``. Where torch's
fake tensor knows the value (a constant made from a Python number) it is used as is; otherwise
the simulator answers with a documented stand-in, chosen so that the step never allocates
less than a real run:

- ``aten._local_scalar_dense`` (``.item()``, ``bool``, ``float``, ``int``, ``.tolist()``):
  **zero** of the tensor's dtype (``False``, ``0``, ``0.0``). Zero is "nothing found" for the
  checks loops make: GradScaler's ``found_inf`` is 0, so the optimizer steps (allocating its
  state and temporaries, the larger branch); clip_grad_norm_'s non-finite check and
  ``isnan().any()`` guards pass; a logged loss has no memory effect; an index read for a
  timestep selects element 0, and indexing allocates the same bytes for any index. Code that
  sizes an allocation by a read value (``torch.empty(int(t.item()))``) is not supported: it
  would allocate nothing here.
- ``aten.nonzero``: every element counts as non-zero: ``numel`` rows of ``ndim`` int64
  indices, the largest output it can have. ``aten.masked_select``: ``numel`` elements, the
  largest. The shapes are fixed (no symbolic sizes), so the code after them runs as usual.

Any other data-dependent op is re-raised with a message naming it.
"""
from __future__ import annotations

import torch
from torch._subclasses.fake_tensor import DataDependentOutputException, DynamicOutputShapeException

aten = torch.ops.aten


def _zero(tensor: torch.Tensor):
    if tensor.dtype == torch.bool:
        return False
    if tensor.is_floating_point():
        return 0.0
    if tensor.is_complex():
        return 0j
    return 0


def _largest_output(func, args):
    if func is aten.nonzero.default:
        t = args[0]
        return torch.empty((t.numel(), t.dim()), dtype=torch.int64, device=t.device)
    if func is aten.masked_select.default:
        t, mask = args[0], args[1]
        n = torch.broadcast_shapes(t.shape, mask.shape).numel()
        return torch.empty((n,), dtype=t.dtype, device=t.device)
    return None


def call_with_host_values(func, args, kwargs, dispatch=None, types=()):
    """``func(*args, **kwargs)`` under the fake mode, a stand-in where it needs values; through
    ``dispatch(func, types, args, kwargs)`` when given (the fake mode's own entry)."""
    try:
        return func(*args, **kwargs) if dispatch is None else dispatch(func, types, args, kwargs)
    except DataDependentOutputException:
        if func is aten._local_scalar_dense.default:
            return _zero(args[0])
        raise RuntimeError(f"the simulator cannot read tensor values for {func}: no host-side stand-in "
                           "(see pytest_vram.sim.value_reads)") from None
    except DynamicOutputShapeException:
        out = _largest_output(func, args)
        if out is None:
            raise RuntimeError(f"{func} has an output shape that depends on tensor values; the simulator "
                               "stands in for nonzero and masked_select only (see pytest_vram.sim.value_reads)"
                               ) from None
        return out
