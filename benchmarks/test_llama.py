"""LLaMA fine-tuning memory: build the model, take one training step, measure both."""
import math

import pytest

from fixtures.suite import params, run_case


@pytest.mark.parametrize("case", params("llm"))
def test_llama(case, vram, benchmark):
    loss = run_case(case, vram, benchmark)
    if vram.executes:
        assert math.isfinite(loss.item())
