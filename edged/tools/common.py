"""What the toolchain's commands share: image folders, preprocessing options, tables.

Image files are listed and read by :mod:`edged.sources.images` (one owner, one error class).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from ..errors import ConfigError, EdgedError
from ..sources.images import IMAGE_SUFFIXES

CONVERT_HINT = "install the convert extra: pip install 'edged[convert]'"


class MissingTensorFlow(EdgedError):
    """TensorFlow (the ``convert`` extra) is not installed."""

    exit_code = 2


def import_tensorflow() -> Any:
    """TensorFlow, quietly; a one-line error naming the extra when it is not installed."""
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tensorflow as tf
    except ImportError:
        raise MissingTensorFlow(f"TensorFlow is not installed: {CONVERT_HINT}") from None
    return tf


def find_images(folder: str | Path, recursive: bool = True) -> list[Path]:
    """Every image in ``folder`` (and its subfolders), sorted; one-line errors for a bad folder."""
    d = Path(folder)
    if not d.exists():
        raise ConfigError(f"image folder not found: {d}")
    if not d.is_dir():
        raise ConfigError(f"not a folder: {d}; pass a folder of images")
    files = d.rglob("*") if recursive else d.iterdir()
    found = sorted(p for p in files if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not found:
        raise ConfigError(f"no images in {d} (looked for {', '.join(IMAGE_SUFFIXES)})")
    return found


def parse_floats(text: str | None) -> float | list[float] | None:
    """``127.5`` -> 127.5; ``123.7,116.3,103.5`` -> a list (per channel, RGB order)."""
    if text is None:
        return None
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"expected a number or comma-separated numbers, not {text!r}") from None
    if not values:
        raise ConfigError(f"expected a number or comma-separated numbers, not {text!r}")
    return values[0] if len(values) == 1 else values


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], right: Sequence[bool] | None = None) -> str:
    """A plain text table, columns padded; ``right`` marks right-aligned (numeric) columns."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    right = right or [False] * len(headers)

    def line(r: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if ra else c.ljust(w) for c, w, ra in zip(r, widths, right)).rstrip()

    out = [line(cells[0]), line(["-" * w for w in widths])]
    out += [line(r) for r in cells[1:]]
    return "\n".join(out)


def human_size(n: int) -> str:
    for unit, k in (("MB", 1 << 20), ("KB", 1 << 10)):
        if n >= k:
            return f"{n / k:.1f} {unit}"
    return f"{n} B"
