"""The plugin's side of multi-GPU tests, as a user relies on it: a node-profile marker budgets
each rank as one of the node's cards, and the record says which rank of which layout it holds."""
import json

import pytest

pytest_plugins = ["pytester"]

RANK_TEST = """
import pytest, torch

@pytest.mark.{marker}
def test_rank(vram):
    vram.parallel({parallel})
    with vram.phase("step"):
        x = torch.zeros(256)
"""


def run(pytester, *args):
    return pytester.runpytest("-p", "no:cacheprovider", "--vram-backend=cpu", *args)


def test_node_marker_budgets_each_rank_as_one_card_and_the_record_says_the_layout(pytester):
    pytester.makepyfile(test_rank=RANK_TEST.format(marker="a100_80gb_x8", parallel="8, 'fsdp', rank=3"))
    result = run(pytester, "--vram-json=out.json", "-m", "a100_80gb_x8")
    result.assert_outcomes(passed=1)
    record = json.loads((pytester.path / "out.json").read_text())["records"][0]
    from pytest_vram.profiles import PROFILES

    assert record["gpu"] == "a100_80gb" and record["budget_bytes"] == PROFILES["a100_80gb"].total_bytes
    assert record["parallel"] == {"ranks": 8, "strategy": "fsdp", "rank": 3}


def test_node_markers_are_registered(pytester):
    result = pytester.runpytest("-p", "no:cacheprovider", "--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.h100_80gb_x8: budget each rank for one of a node's 8x H100 80 GB*"])


def test_a_single_gpu_record_has_no_parallel_field(pytester):
    pytester.makepyfile(test_rank=RANK_TEST.format(marker="v100", parallel="1, 'none'").replace(
        "    vram.parallel(1, 'none')\n", ""))
    run(pytester, "--vram-json=out.json").assert_outcomes(passed=1)
    assert "parallel" not in json.loads((pytester.path / "out.json").read_text())["records"][0]


@pytest.mark.parametrize("parallel, message", [
    ("4, 'fsdp', rank=4", "vram.parallel: rank 4 does not exist in a world of 4; valid choices: 0..3"),
    ("0, 'fsdp'", "vram.parallel: rank 0 does not exist in a world of 0*"),
    ("2, ''", "vram.parallel: strategy '' should name the strategy*"),
])
def test_bad_vram_parallel_is_one_error(pytester, parallel, message):
    pytester.makepyfile(test_rank=RANK_TEST.format(marker="v100", parallel=parallel))
    result = run(pytester)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([f"E *ValueError: {message}"])
