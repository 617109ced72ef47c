"""The 2022 Trainer's replay (fixtures/recipes.py ``hf_trainer_2022``): the optimizer steps that
GradScaler skips at the start of an fp16 run (``skipped_steps``).

- a skipped step runs forward, backward, unscale and clipping but no ``optimizer.step()``: no
  AdamW state is made and no weight moves; the first real step after it makes the state;
- ``skipped_steps`` needs fp16 (GradScaler), one error naming the value otherwise;
- on the full-size BERT-large fp16 anchor every count from one on reserves the same bytes.
"""
import dataclasses

import pytest
import torch

from fixtures.anchors import get_anchor
from fixtures.anchor_optimizers import make_optimizer
from fixtures.recipes import hf_trainer_2022
from fixtures.replay import build

FP16 = "bert-large-v100-bs4-fp16"


def _twin_run(skipped_steps: int, steps: int):
    twin = get_anchor(FP16).tiny_twin()
    torch.manual_seed(0)
    model = build(twin, "cpu", fill=True)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = make_optimizer(model, twin.optimizer, twin.lr)
    hf_trainer_2022(model, optimizer, "cpu", **dict(twin.recipe_args, skipped_steps=skipped_steps, steps=steps))
    moved = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    return model, optimizer, moved


def test_a_skipped_step_makes_no_optimizer_state_and_moves_no_weight():
    model, optimizer, moved = _twin_run(skipped_steps=2, steps=0)
    assert len(optimizer.state) == 0 and moved == []
    # the Trainer's model.zero_grad() (torch 1.10: set_to_none=False) keeps the gradients, zeroed
    assert all(p.grad is not None and not p.grad.any() for p in model.parameters())


def test_the_first_real_step_after_skipped_ones_makes_the_state():
    model, optimizer, moved = _twin_run(skipped_steps=2, steps=1)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(optimizer.state) == len(trainable) and moved
    assert all(optimizer.state[p]["step"] == 1 for p in trainable)


@pytest.mark.parametrize("kwargs", [{"skipped_steps": 1}, {"skipped_steps": -1, "fp16": True}])
def test_skipped_steps_need_fp16_and_a_count(kwargs):
    with pytest.raises(ValueError, match=rf"skipped_steps={kwargs['skipped_steps']}: GradScaler skips steps only "
                                         r"with fp16=True; valid choices: 0, or a count >= 0 with fp16=True"):
        hf_trainer_2022(None, None, "cpu", batch_size=1, seq_len=4, **kwargs)


@pytest.mark.slow
def test_every_skipped_step_count_from_one_reserves_the_same():
    """BERT-large fp16 under the simulator: after one skipped step the allocator's state no longer
    depends on how many more were skipped, nor on a third real step."""
    from tests.test_accuracy import simulate

    anchor = get_anchor(FP16)
    reserved = {}
    for skipped, steps in ((1, 2), (2, 2), (1, 3)):
        args = dict(anchor.recipe_args, skipped_steps=skipped, steps=steps)
        reserved[skipped, steps] = simulate(dataclasses.replace(anchor, recipe_args=args))["phases"]["step"]["reserved"]
    assert len(set(reserved.values())) == 1, reserved
