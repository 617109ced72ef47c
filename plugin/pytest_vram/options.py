"""Command-line options, each with an ini twin of the same name in underscores, and the type
of its value. :mod:`.settings` parses them once; the ``pytest-vram`` command shares the help.

Command-line defaults are None so that the ini value is read when the option is not given
(pytest-memray's issue #135 is the bug this avoids). Torch-free: the history CLI imports it.
"""
from __future__ import annotations

from dataclasses import dataclass

from .schema import BACKENDS


# What an option's value is; :func:`.settings.parse` turns each into its Python value.
TYPES = ("text", "choice", "size", "profile", "shard", "output", "switch", "list")
BUSY_ACTIONS = ("warn", "refuse", "ignore")


@dataclass(frozen=True)
class Option:
    flag: str
    help: str
    default: str | None = None
    type: str = "text"
    choices: tuple[str, ...] = ()
    noun: str = "value"  # what a value is called in an error ("unknown backend 'gpu'")

    def __post_init__(self):
        assert self.type in TYPES and bool(self.choices) == (self.type == "choice"), self

    @property
    def multiple(self) -> bool:
        return self.type == "list"

    @property
    def switch(self) -> bool:
        """A flag without a value."""
        return self.type == "switch"

    @property
    def argparse_help(self) -> str:
        """The help text as argparse wants it: a literal '%' doubled (argparse %-formats help)."""
        return self.help.replace("%", "%%")

    @property
    def ini(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")

    @property
    def name(self) -> str:
        """The option's name without the ``vram_`` prefix: its field in :class:`.settings.Settings`."""
        return self.ini.removeprefix("vram_")


OPTIONS = (
    Option("--vram-backend", f"how memory is measured: {'|'.join(BACKENDS)} "
           "(auto: cuda if a CUDA GPU is present, else sim)", "auto", "choice", BACKENDS, "backend"),
    Option("--vram-gpu", "GPU profile to emulate for tests without a profile marker, e.g. v100",
           type="profile"),
    Option("--vram-json", "write this session's memory records to PATH (also without pytest-benchmark)",
           type="output"),
    Option("--vram-compare", "compare with a saved history: PATH, a pytest-benchmark run number "
           "(NNNN) or 'latest'"),
    Option("--vram-compare-fail", "fail the session when a case regresses past EXPR, e.g. "
           "step.peak:5% or creation.allocated:256MiB (repeatable)", type="list"),
    Option("--vram-isolate", "run each case (each test using the vram fixture) in a fresh spawned "
           "process: its own peak, allocator and CUDA context; a crash fails only that case", type="switch"),
    Option("--vram-shard", "run shard I of N (I/N, 1 <= I <= N): every Nth selected test in "
           "collection order; join the shards' --vram-json files with 'pytest-vram merge'", type="shard"),
    Option("--vram-busy", "what to do when the GPU already holds more than --vram-busy-limit of "
           f"other processes' memory at start: {'|'.join(BUSY_ACTIONS)}", "warn", "choice", BUSY_ACTIONS, "action"),
    Option("--vram-busy-limit", "other processes' memory on the GPU tolerated at start (a size "
           "with its unit)", "512MiB", "size"),
    Option("--vram-breakdown", "add the breakdown of each case's largest phase to the terminal "
           "table (weights, gradients, optimizer state, activations, allocator cache and context)",
           type="switch"),
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


def raw(config, opt: Option):
    """The option's unparsed value: the command line if given, else the ini key, else its default."""
    value = config.getoption(opt.ini)
    if value is None:
        value = config.getini(opt.ini)
    if opt.multiple:
        return list(value or [])
    if opt.switch:
        return bool(value)
    return value or opt.default


def find(flag: str) -> Option:
    return next(o for o in OPTIONS if o.flag == flag)
