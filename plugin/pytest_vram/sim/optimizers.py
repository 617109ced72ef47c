"""The optimizer and gradient-clipping implementation torch picks on the simulated target.

torch.optim chooses between its single-tensor, ``foreach`` and ``fused`` implementations
from the parameters' type and device, and the choice changes the memory of ``step()``:

- torch/optim/optimizer.py ``_default_to_fused_or_foreach``: ``foreach`` when every parameter's
  ``type()`` is in ``_foreach_supported_types`` ([Tensor, Parameter]) and its device type in
  torch/utils/_foreach_utils.py ``_get_foreach_kernels_supported_devices()`` (cuda, xpu, mtia,
  privateuse1: not cpu). ``fused`` is never the default (adam.py/adamw.py ``use_fused=False``).
  The foreach AdamW (adam.py ``_multi_tensor_adam``) holds ``exp_avg_sq_sqrt =
  _foreach_sqrt(exp_avg_sqs)``, one temporary the size of every parameter of a device and
  dtype group, until the update; the single-tensor loop holds one parameter's worth at a time.
- torch/nn/utils/clip_grad.py ``_get_total_norm`` / ``_clip_grads_with_norm_``: with
  ``foreach=None`` they use ``_foreach_norm`` / ``_foreach_mul_`` where
  ``_foreach_utils._has_foreach_support`` holds: device type in the foreach list or "cpu", and
  every tensor's ``type()`` in ``_foreach_utils._foreach_supported_types`` ([Tensor]).

Under the simulator parameters are ``FakeTensor`` instances on the CPU, so both checks fail by
type (a real CPU tensor would pass the clipping one) and the optimizer check fails by device.
While :func:`target_implementations` is active, a ``FakeTensor`` counts as the plain tensor it
stands for (both targets: the clipping then takes the path a real CPU run takes), and for a
GPU target the device list the optimizer reads includes "cpu", the fake tensors' device, as
it includes "cuda" on the GPU.

The scalars torch.optim keeps on the host (:func:`host_scalars`, GPU targets): with
``capturable`` and ``fused`` off, Adam/AdamW (and torch's other optimizers) keep each
parameter's ``step`` on the CPU ("note(crcrpar): [special device hosting for step]",
torch/optim/adam.py ``_init_group``: ``torch.tensor(0.0, dtype=_get_scalar_dtype(),
device="cpu")``) and add to them with ``torch.tensor(1.0, device="cpu")`` (``_multi_tensor_adam``);
capturable or fused, the step is ``torch.zeros((), device=p.device)``, on the GPU. Under the
simulator every fake tensor is a CPU tensor standing for the GPU's, so within a torch.optim
optimizer's ``step()`` a tensor made from Python data (``aten.lift_fresh``: every ``torch.tensor``
call in torch 2.13's torch/optim step paths passes ``device="cpu"`` or none) is kept out of the
count: no CUDA allocation is made for it. Outside ``step()`` (``load_state_dict`` moves the steps
with ``device=p.device``) and for other libraries' optimizers (bitsandbytes keeps ``step`` as a
Python int) nothing changes.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch.optim.optimizer as optimizer_module
import torch.utils._foreach_utils as foreach_utils
from torch._subclasses.fake_tensor import FakeTensor


@contextlib.contextmanager
def target_implementations(gpu: bool) -> Iterator[None]:
    """Within the block torch picks the implementations it would pick on the target
    (``gpu``: a CUDA device; else the CPU)."""
    type_lists = [optimizer_module._foreach_supported_types, foreach_utils._foreach_supported_types]
    devices = optimizer_module._get_foreach_kernels_supported_devices

    def foreach_devices() -> list[str]:
        return devices() + ["cpu"]

    for types in type_lists:
        types.append(FakeTensor)
    if gpu:
        optimizer_module._get_foreach_kernels_supported_devices = foreach_devices
    try:
        yield
    finally:
        for types in type_lists:
            types.remove(FakeTensor)
        optimizer_module._get_foreach_kernels_supported_devices = devices


@contextlib.contextmanager
def host_scalars(tracker) -> Iterator[None]:
    """While active, the scalars a torch.optim optimizer's ``step()`` makes from Python data stay
    out of ``tracker``'s count (see the module docstring): torch's global optimizer step hooks
    (``register_optimizer_step_pre_hook`` / ``_post_hook``, called around every
    ``Optimizer.step``) switch ``tracker.host_scalars`` on for an optimizer defined in torch.optim
    and off after it; a step that raised leaves it on until the block ends, when the backend stops."""
    def before(optimizer, args, kwargs):
        if type(optimizer).__module__.startswith("torch.optim."):
            tracker.host_scalars = True

    def after(optimizer, args, kwargs):
        tracker.host_scalars = False

    handles = [optimizer_module.register_optimizer_step_pre_hook(before),
               optimizer_module.register_optimizer_step_post_hook(after)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        tracker.host_scalars = False
