"""FLUX fine-tuning memory (a FLUX transformer config, e.g. the zoo's ``flux1-dev``, in a cases
file): the transformer built, one training step on cached latents and text embeddings."""
import math

import pytest

from fixtures.suite import params, run_case


@pytest.mark.parametrize("case", params("flux"))
def test_flux(case, vram, benchmark):
    loss = run_case(case, vram, benchmark)
    if vram.executes:
        assert math.isfinite(loss.item())
