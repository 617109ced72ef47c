"""Each anchor's GPU profile marker is added after ``-m`` has selected, so that ``-m v100`` (the
suite's budget run and its committed baseline) never picks up the validation set; select it
with ``-m validation``."""
import pytest

from fixtures.anchors import get_anchor


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items):
    for item in items:
        callspec = getattr(item, "callspec", None)
        if item.get_closest_marker("validation") and callspec and "anchor" in callspec.params:
            gpu = get_anchor(callspec.params["anchor"]).gpu
            if gpu:  # a source that names no GPU is listed, not replayed
                item.add_marker(getattr(pytest.mark, gpu))
