"""The LyCORIS rows stepped through sd-scripts' buckets (fixtures/sd_scripts_buckets.py)."""
import json

from fixtures.anchors import get_anchor
from fixtures.sd_scripts_buckets import _sim, bucket_order, main, make_bucket_resolutions, run


def test_buckets_are_sd_scripts_for_the_published_bucketing():
    """make_bucket_resolutions((512, 512), 320, 960, 64): 64 units of 64x64 px; 512x512, then for
    each width w from 320 to 960 the height min(960, 64 // (w / 64) * 64) and the transpose (no
    floor at min_size: 832, 896, 960 px wide buckets are 256 px high)."""
    assert make_bucket_resolutions() == [
        (256, 832), (256, 896), (256, 960), (320, 704), (320, 768), (384, 640), (448, 576), (512, 512),
        (576, 448), (640, 384), (704, 320), (768, 320), (832, 256), (896, 256), (960, 256)]
    order = bucket_order()
    assert sorted(order) == make_bucket_resolutions() and order != make_bucket_resolutions()
    assert bucket_order() == order and bucket_order(1) != order
    three = bucket_order(passes=3)
    assert three[:15] == order and all(sorted(three[i:i + 15]) == make_bucket_resolutions() for i in (15, 30))
    assert three[15:30] != order


def test_each_bucket_is_one_step_and_reserved_memory_only_grows():
    """On the tiny SD twin, a small bucket after a large one allocates less but reserves no less:
    the simulated caching allocator keeps what it reserved."""
    twin = get_anchor("lycoris-sd1-lora-attn-mlp-dim32-rtx4090").tiny_twin()
    steps = run(twin, [(64, 64), (32, 32), (32, 64)], lambda: _sim(twin.gpu))
    assert [(s["width"], s["height"]) for s in steps] == [(64, 64), (32, 32), (32, 64)]
    assert steps[1]["peak"] < steps[0]["peak"]
    reserved = [s["reserved"] for s in steps]
    assert reserved == sorted(reserved) and all(s["peak"] <= s["reserved"] for s in steps)


def test_the_command_writes_its_order_and_each_rows_steps(tmp_path, monkeypatch):
    import fixtures.sd_scripts_buckets as buckets

    calls = []
    monkeypatch.setattr(buckets, "run", lambda anchor, order, factory: calls.append(anchor.id) or
                        [{"width": w, "height": h, "peak": 1, "reserved": 2} for w, h in order])
    assert bucket_order(5, passes=2) != bucket_order(6, passes=2)
    out = tmp_path / "b.json"
    assert main(["-o", str(out), "--seeds", "5", "6", "--passes", "2"]) == 0
    data = json.loads(out.read_text())
    assert len(calls) == 6 and set(data["runs"]) == set(calls)
    for run_ in data["runs"].values():
        assert [o["seed"] for o in run_["orders"]] == [5, 6]
        assert all(o["max_reserved"] == 2 and len(o["steps"]) == 30 for o in run_["orders"])
