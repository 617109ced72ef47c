"""The record schema, torch-free: what a memory record and a history file hold.

Everything the history side (``pytest-vram table|compare|plot|merge``) needs to read, check
and display records lives here and imports no torch, so those commands run on a CI box
without it. The measuring side (meter, backends, simulator) writes records of this shape.
"""
from __future__ import annotations

FORMAT = "pytest-vram"
VERSION = 1

# What a phase's peak is split into (``breakdown``); the parts sum to the phase's peak.
CATEGORIES = (
    "frozen_weights", "quantized_weights", "trainable_params",
    "gradients", "optimizer_state", "activations",
)
DEFAULT_CATEGORY = "activations"

BACKENDS = ("auto", "cuda", "sim", "cpu")
