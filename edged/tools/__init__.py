"""The model toolchain's commands (``edged convert``, ``eval``, ``bench``).

Each tool module adds its subcommand in :func:`add_commands` and its handler to
``HANDLERS`` (name -> function taking the parsed arguments, returning the exit code), so
the tools stay out of ``edged/cli.py``. Heavy imports (TensorFlow) happen inside handlers.
"""

from __future__ import annotations

import argparse
from typing import Any, Callable

from . import bench, convert, evaluate

HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "convert": convert.cmd_convert,
    "eval": evaluate.cmd_eval,
    "bench": bench.cmd_bench,
}


def add_commands(sub: Any) -> None:
    """Add the toolchain's subcommands to ``edged``'s subparsers."""
    convert.add_command(sub)
    evaluate.add_command(sub)
    bench.add_command(sub)
