"""The model toolchain's commands (``edged convert``, ``eval``, ``bench``).

Each tool module adds its subcommand in :func:`add_commands` and its handler to
``HANDLERS`` (name -> function taking the parsed arguments, returning the exit code), so
the tools stay out of ``edged/cli.py``. The parsers are plain argparse
(:mod:`edged.tools.parsers`); a tool's module, and what it imports (numpy, OpenCV, the
interpreter, TensorFlow for convert), loads only when its command runs.
"""

from __future__ import annotations

import argparse
import importlib
from typing import Any, Callable

from . import parsers


def _lazy(module: str, name: str) -> Callable[[argparse.Namespace], int]:
    def handler(args: argparse.Namespace) -> int:
        return int(getattr(importlib.import_module(f"{__name__}.{module}"), name)(args))

    handler.__name__ = name
    return handler


HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "convert": _lazy("convert", "cmd_convert"),
    "eval": _lazy("evaluate", "cmd_eval"),
    "bench": _lazy("bench", "cmd_bench"),
}


def add_commands(sub: Any) -> None:
    """Add the toolchain's subcommands to ``edged``'s subparsers."""
    parsers.add_convert(sub)
    parsers.add_eval(sub)
    parsers.add_bench(sub)
