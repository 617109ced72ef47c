"""Sizes and GPU profiles: what users type in markers and options."""
import pytest

from pytest_vram.profiles import PROFILES, get_profile
from pytest_vram.sizes import format_bytes, parse_size


@pytest.mark.parametrize("text, expected", [
    ("12GiB", 12 * 2**30), ("15 GB", 15 * 10**9), ("512MiB", 512 * 2**20),
    ("1.5 GiB", 3 * 2**29), ("100B", 100), (4096, 4096),
])
def test_parse_size_keeps_gib_and_gb_apart(text, expected):
    assert parse_size(text) == expected
    assert isinstance(parse_size(text), int)


@pytest.mark.parametrize("bad", ["12", "12 gigs", "GiB", "-3GiB", "", True, -1])
def test_malformed_size_names_value_and_units(bad):
    with pytest.raises(ValueError, match="malformed size") as info:
        parse_size(bad)
    assert repr(bad) in str(info.value)


def test_format_bytes_says_its_unit():
    assert format_bytes(16_945_512_448) == "15.782 GiB"
    assert format_bytes(16_945_512_448, "GB") == "16.946 GB"
    assert format_bytes(None) == "-"


def test_profiles_cover_the_common_cards():
    assert {"v100", "t4", "a10g", "rtx3090", "rtx4090", "a100_40gb", "a100_80gb", "h100_80gb"} <= set(PROFILES)
    v100 = get_profile("v100")
    assert v100.total_bytes == 16_945_512_448
    assert v100.compute_capability == (7, 0) and not v100.bf16
    for profile in PROFILES.values():
        assert isinstance(profile.total_bytes, int) and isinstance(profile.context_bytes, int)


def test_unknown_profile_lists_valid_choices():
    with pytest.raises(ValueError, match=r"unknown GPU profile 'v200'; valid choices: v100, t4"):
        get_profile("v200")


@pytest.mark.parametrize("huge", ["9" * 400 + "GiB", 2**70, "17179869185 GiB"])
def test_an_absurd_size_is_one_clear_error(huge):
    with pytest.raises(ValueError, match=r"malformed size .*larger than 18446744073709551616 bytes \(16 EiB\)"):
        parse_size(huge)


def test_a_size_is_exact_not_a_rounded_float():
    assert parse_size("16945512448 B") == 16_945_512_448
    assert parse_size("0.1 GB") == 100_000_000 and parse_size("1.000000000000000001 GiB") == 2**30


def test_settings_options_budget_and_the_bridge_import_no_torch():
    """The history CLI imports options; settings, the budget rule and the pytest-benchmark
    bridge are read before any backend: none of them may need torch."""
    import subprocess
    import sys

    code = ("import sys; import pytest_vram.options, pytest_vram.settings, pytest_vram.budget, "
            "pytest_vram.benchmark_bridge, pytest_vram.hookspec; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
