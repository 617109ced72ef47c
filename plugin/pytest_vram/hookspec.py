"""Hooks a project implements (in its conftest.py or a plugin) to extend pytest-vram without
editing it. Registered by the plugin's ``pytest_addhooks``.
"""
from __future__ import annotations

import pytest


@pytest.hookspec
def pytest_vram_gpu_profiles() -> list:
    """Return :class:`pytest_vram.profiles.GpuProfile` entries for cards the built-in table
    lacks. Each becomes a marker (``@pytest.mark.NAME``, listed by ``pytest --markers``) and a
    value of ``--vram-gpu``, as the built-in ones are. A name that exists already is an error.
    """


@pytest.hookspec
def pytest_vram_libraries() -> list:
    """Return the names of installed distributions (as pip knows them, e.g. "transformers")
    whose versions every history records in ``machine_info["vram"]["libraries"]``, beside the
    plugin's own (torch, pytest, pytest-benchmark, nvidia-ml-py): histories measured with
    different versions are then warned about by ``compare`` and refused by ``merge``.
    """
