"""Stable Diffusion fine-tuning memory: build UNet + text encoder + VAE, one training step."""
import math

import pytest

from fixtures.suite import params, run_case


@pytest.mark.parametrize("case", params("diffusion"))
def test_stable_diffusion(case, vram, benchmark):
    loss = run_case(case, vram, benchmark)
    if vram.executes:
        assert math.isfinite(loss.item())
