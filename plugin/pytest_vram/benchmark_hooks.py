"""Hooks registered only when pytest-benchmark is installed: GPU identity, backend and library
versions go into its ``machine_info`` so that saved histories say what they were measured on."""
from __future__ import annotations


def pytest_benchmark_update_machine_info(config, machine_info):
    from .plugin import STATE

    machine_info["vram"] = config.stash[STATE].describe()
