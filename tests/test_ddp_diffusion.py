"""DDP of a diffusion model (fixtures/ddp.py ``apply_ddp``): as diffusers' LoRA training scripts
run it (``accelerator.prepare(unet)``), only the UNet is wrapped; its reducer's bucket holds the
UNet's trainable (LoRA) gradients and lives as long as DDP."""
from __future__ import annotations

from fixtures.adapters import apply_adapter
from fixtures.ddp import SimulatedDDP
from fixtures.models import build_model
from fixtures.multi_gpu import MULTI_GPU_CASES
from fixtures.parallel import Layout, apply_layout
from pytest_vram.sim.backend import SimBackend
from pytest_vram.sim.process_group import fake_process_group


def test_ddp_wraps_the_unet_alone_and_buckets_its_lora_gradients():
    backend = SimBackend(None, gpu_models=False)
    with fake_process_group(2) as mesh:
        backend.start()
        try:
            model = apply_adapter(build_model("sdxl-tiny", "fp32", "cpu"), "diffusion", "lora", 4)
            before = backend.tracker.live_bytes
            model = apply_layout(model, Layout(2, "ddp"), mesh, simulated=True)
            held = backend.tracker.live_bytes - before
        finally:
            backend.stop()
    assert isinstance(model.unet, SimulatedDDP)
    assert not any(isinstance(m, SimulatedDDP) for m in (model.text_encoder, model.text_encoder_2, model.vae))
    lora = sum(p.numel() * p.element_size() for p in model.unet.parameters() if p.requires_grad)
    assert lora == sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad) > 0
    assert sum(b.numel() * b.element_size() for b in model.unet.buckets) == lora
    assert held == lora   # the bucket stays; the broadcast's flat temporaries are gone


def test_the_suite_has_sdxl_lora_under_ddp_and_llama_13b_with_cpu_offload():
    ids = {c.id for c in MULTI_GPU_CASES}
    assert "sdxl-lora-r4-fp16-autocast-ddp2-bs1-1024px" in ids
    assert {"llama-13b-lora-r8-bf16-fsdp4-bs1-seq512", "llama-13b-lora-r8-bf16-fsdp4-offload-bs1-seq512"} <= ids
