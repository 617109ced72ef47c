"""pytest-vram: measure GPU memory in pytest, over named phases of a test."""
from .meter import Meter, PhaseOOM, PhaseResult
from .profiles import PROFILES, GpuProfile, get_profile
from .sizes import format_bytes, parse_size

__all__ = ["Meter", "PhaseOOM", "PhaseResult", "PROFILES", "GpuProfile", "get_profile",
           "format_bytes", "parse_size"]
__version__ = "0.1.0"
