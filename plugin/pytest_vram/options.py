"""Command-line options, each with an ini twin of the same name in underscores.

Command-line defaults are None so that the ini value is read when the option is not given
(pytest-memray's issue #135 is the bug this avoids).
"""
from __future__ import annotations

from dataclasses import dataclass

from .schema import BACKENDS


@dataclass(frozen=True)
class Option:
    flag: str
    help: str
    default: str | None = None
    multiple: bool = False
    switch: bool = False  # a flag without a value

    @property
    def argparse_help(self) -> str:
        """The help text as argparse wants it: a literal '%' doubled (argparse %-formats help)."""
        return self.help.replace("%", "%%")

    @property
    def ini(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


OPTIONS = (
    Option("--vram-backend", f"how memory is measured: {'|'.join(BACKENDS)} "
           "(auto: cuda if a CUDA GPU is present, else sim)", "auto"),
    Option("--vram-gpu", "GPU profile to emulate for tests without a profile marker, e.g. v100"),
    Option("--vram-json", "write this session's memory records to PATH (also without pytest-benchmark)"),
    Option("--vram-compare", "compare with a saved history: PATH, a pytest-benchmark run number "
           "(NNNN) or 'latest'"),
    Option("--vram-compare-fail", "fail the session when a case regresses past EXPR, e.g. "
           "step.peak:5% or creation.allocated:256MiB (repeatable)", multiple=True),
    Option("--vram-isolate", "run each case (each test using the vram fixture) in a fresh spawned "
           "process: its own peak, allocator and CUDA context; a crash fails only that case", switch=True),
    Option("--vram-shard", "run shard I of N (I/N, 1 <= I <= N): every Nth selected test in "
           "collection order; join the shards' --vram-json files with 'pytest-vram merge'"),
    Option("--vram-busy", "what to do when the GPU already holds more than --vram-busy-limit of "
           "other processes' memory at start: warn|refuse|ignore", "warn"),
    Option("--vram-busy-limit", "other processes' memory on the GPU tolerated at start (a size "
           "with its unit)", "512MiB"),
    Option("--vram-isolated-child", "internal: set by --vram-isolate on the child process it "
           "spawns; the child writes its test reports to PATH"),
)


def add_to_pytest(parser) -> None:
    group = parser.getgroup("vram", "GPU memory (pytest-vram)")
    for opt in OPTIONS:
        if opt.multiple:
            group.addoption(opt.flag, action="append", default=None, help=opt.argparse_help)
            parser.addini(opt.ini, opt.help, type="linelist", default=[])
        elif opt.switch:
            group.addoption(opt.flag, action="store_true", default=None, help=f"{opt.argparse_help} [ini: {opt.ini}]")
            parser.addini(opt.ini, opt.help, type="bool", default=False)
        else:
            group.addoption(opt.flag, default=None, help=f"{opt.argparse_help} [ini: {opt.ini}]")
            parser.addini(opt.ini, opt.help, default=opt.default or "")


def get(config, flag: str):
    """The option's value: the command line if given, else the ini key, else its default."""
    opt = next(o for o in OPTIONS if o.flag == flag)
    value = config.getoption(opt.ini)
    if value is None:
        value = config.getini(opt.ini)
    if opt.multiple:
        return list(value or [])
    if opt.switch:
        return bool(value)
    return value or opt.default
