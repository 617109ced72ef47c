"""Memory sizes: parse strings that say their unit, format bytes for display.

Bytes are integers everywhere they are stored; GiB (2**30) and GB (10**9) are both accepted
and never confused. Formatting happens at display time only.
"""
from __future__ import annotations

import re
from fractions import Fraction

UNITS: dict[str, int] = {
    "B": 1,
    "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
    "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40,
}
KiB, MiB, GiB = UNITS["KiB"], UNITS["MiB"], UNITS["GiB"]
# The largest size accepted: 2**64 bytes (16 EiB), past any device's address space; a bigger
# number is a typo, and would overflow the 64-bit counters it is compared with.
MAX_BYTES = 2**64
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]+)\s*$")


def parse_size(value: str | int) -> int:
    """Return the number of bytes in ``value``: an int (bytes) or a string like "12GiB", "15 GB".

    Raises ValueError naming the bad value and the valid units.
    """
    if isinstance(value, bool):
        raise ValueError(f"malformed size {value!r}: expected bytes (int) or a string such as '12GiB'")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"malformed size {value!r}: a size cannot be negative")
        return _checked(value, value)
    match = _SIZE.match(str(value))
    if not match or match.group(2) not in UNITS:
        raise ValueError(
            f"malformed size {value!r}: expected a number and a unit, such as '12GiB' or '15 GB'; "
            f"units: {', '.join(UNITS)}"
        )
    number, unit = match.groups()
    # exact arithmetic: a float would turn a 400-digit number into inf (and round() would crash)
    return _checked(round(Fraction(number) * UNITS[unit]), value)


def _checked(nbytes: int, value) -> int:
    if nbytes > MAX_BYTES:
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        raise ValueError(f"malformed size {shown}: larger than {MAX_BYTES} bytes (16 EiB); "
                         "expected a size such as '12GiB' or '15 GB'")
    return nbytes


def format_bytes(n: int | None, unit: str = "GiB", digits: int = 3) -> str:
    """Format integer bytes in ``unit`` with the unit written out, e.g. '13.477 GiB'."""
    if n is None:
        return "-"
    return f"{n / UNITS[unit]:.{digits}f} {unit}"
