"""The validation set: each published real-GPU figure (fixtures/anchors.py) replayed under the
vram fixture with its GPU profile. Run it with

    pytest benchmarks -m validation --vram-json results/validation.json

and make the page with ``python -m fixtures.accuracy results/validation.json > docs/accuracy.md``.
A record's case id is the anchor's id. An anchor whose setup is not published is skipped with
its reason; a replay that the simulator cannot run yet (a value read such as GradScaler's inf
check) is skipped with the exception's message: never a made-up number.
"""
import pytest
from torch._subclasses.fake_tensor import DataDependentOutputException, DynamicOutputShapeException

from fixtures.anchors import ANCHORS
from fixtures.models import get_model_spec
from fixtures.replay import NotReplayable, replay
from fixtures.suite import FULL_SIZE_ON_CPU


def _params():
    # the GPU profile marker is added after selection (conftest.py), so -m v100 leaves these out
    return [pytest.param(a.id, id=a.id, marks=pytest.mark.validation) for a in ANCHORS]


@pytest.mark.parametrize("anchor", _params())
def test_anchor(anchor, vram):
    from fixtures.anchors import get_anchor

    anchor = get_anchor(anchor)
    if anchor.replayed and get_model_spec(anchor.model).full_size and vram.backend == "cpu":
        pytest.skip(FULL_SIZE_ON_CPU)
    try:
        replay(anchor, vram)
    except NotReplayable as exc:
        pytest.skip(f"not replayable: {exc}")
    except (DataDependentOutputException, DynamicOutputShapeException) as exc:
        pytest.skip(f"the simulator cannot run this recipe yet: a value read on the device "
                    f"({type(exc).__name__}: {str(exc).splitlines()[0]})")
