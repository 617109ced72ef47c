"""The suite's step under PyTorch's own MemTracker (torch.distributed._tools.mem_tracker), for
the speed benchmark's side-by-side figure.

MemTracker refuses a PEFT model as is: on each module's first forward it installs a gradient
hook on every parameter (``_track_module_params_and_buffers``: ``param.register_hook``), and
``register_hook`` raises "cannot register a hook on a tensor that doesn't require gradient" for
the frozen base weights. The patch (:class:`PeftMemTracker`) calls torch's method with
``install_grad_hooks=False`` and then installs the same two hooks (gradient and
post-accumulate-grad, both recording the gradient as ``GRAD``) on the parameters that require
gradients only; everything else is torch's.

The model is built, as the suite builds it, under a plain FakeTensorMode (the simulator's own
``fake_tensors``: no real memory for 7B weights), without the simulator's CUDA-path shims or
tracker: MemTracker sees torch's CPU code paths.
"""
from __future__ import annotations

import time

from torch.distributed._tools.mem_tracker import MemTracker, _MemRefType

from fixtures.adapters import apply_adapter
from fixtures.cases import Case
from fixtures.models import build_model, get_model_spec, trained_part
from fixtures.training import STEPS, make_optimizer, prepare_for_training, train_mode
from pytest_vram.sim.backend import fake_tensors


class PeftMemTracker(MemTracker):
    """MemTracker that installs gradient hooks only on parameters that require gradients."""

    def _track_module_params_and_buffers(self, module, install_grad_hooks=True):
        memory = super()._track_module_params_and_buffers(module, install_grad_hooks=False)
        if install_grad_hooks:
            def grad_hook(grad):
                self._update_and_maybe_create_winfos(grad, _MemRefType.GRAD)

            for param in module.parameters():
                if param.requires_grad and self._param_to_grad_hook_handles.get(param) is None:
                    self._param_to_grad_hook_handles[param] = (
                        param.register_hook(grad_hook),
                        param.register_post_accumulate_grad_hook(lambda p: grad_hook(p.grad)))
        return memory


def step_under_memtracker(case: Case) -> tuple[float, int]:
    """Seconds for the case's training step under MemTracker, and MemTracker's peak total bytes."""
    spec = get_model_spec(case.model)
    with fake_tensors():
        model = build_model(case.model, case.quantization, "cpu", fill=False)
        model = prepare_for_training(model, spec.family, case.checkpointing, case.attention)
        model = apply_adapter(model, spec.family, case.adapter, case.rank, case.targets)
        train_mode(model, trained_part(model, spec.family))
        optimizer = make_optimizer(model, case.optimizer)
        tracker = PeftMemTracker()
        tracker.track_external(model, optimizer)
        start = time.perf_counter()
        with tracker:
            STEPS[spec.family](model, optimizer, case.batch_size, case.size, "cpu", case.autocast)
        seconds = time.perf_counter() - start
        peak = sum(snap["Total"] for snap in tracker.get_tracker_snapshot("peak").values())
    return seconds, int(peak)
