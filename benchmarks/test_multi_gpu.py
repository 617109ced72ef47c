"""Per-rank memory of multi-GPU fine-tuning (FSDP2, DDP): one rank simulated in a fake
process group (``pytest benchmarks -m multi_gpu``, or a node's marker such as ``-m a100_80gb_x8``)."""
import math

import pytest

from fixtures.multi_gpu import multi_gpu_params
from fixtures.suite import run_case


@pytest.mark.parametrize("case", multi_gpu_params())
def test_multi_gpu(case, vram, benchmark):
    loss = run_case(case, vram, benchmark)
    if vram.executes:
        assert math.isfinite(loss.item())
