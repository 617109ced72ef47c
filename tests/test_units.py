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
