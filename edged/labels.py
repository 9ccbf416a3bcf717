"""Labels files: one label a line, or ``ID label`` pairs, as pycoral reads them."""

from __future__ import annotations

import re
from pathlib import Path

from .errors import ConfigError

_PAIR = re.compile(r"^\s*(\d+)[\s:,]+(.*\S)\s*$")


def parse_labels(text: str) -> dict[int, str]:
    """Labels in either common format, as pycoral reads them.

    * one label a line: the line number (from 0) is the id;
    * ``ID label`` pairs (``0 person``, ``0: person``, ``0,person``): the number is the id.

    A file is read as pairs only when every non-empty line is a pair, so a plain list whose
    labels happen to start with a digit is not misread. Blank lines in a plain list keep
    their line number (some label files leave gaps for unused ids).
    """
    lines = text.splitlines()
    nonblank = [ln for ln in lines if ln.strip()]
    if nonblank and all(_PAIR.match(ln) for ln in nonblank):
        out: dict[int, str] = {}
        for ln in nonblank:
            m = _PAIR.match(ln)
            assert m is not None
            out[int(m.group(1))] = m.group(2)
        return out
    return {i: ln.strip() for i, ln in enumerate(lines) if ln.strip()}


def read_labels(path: str | Path) -> dict[int, str]:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"labels file not found: {p}") from None
    except IsADirectoryError:
        raise ConfigError(f"labels path is a directory, not a file: {p}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"labels file is not UTF-8 text: {p}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read labels file {p}: {exc.strerror}") from None
    labels = parse_labels(text)
    if not labels:
        raise ConfigError(f"labels file is empty: {p}")
    return labels


def check_labels(labels: dict[int, str], classes: int, path: str | Path) -> str | None:
    """A labels file against the number of classes its model scores; for a mismatch, the one
    warning line to log (None: it fits).

    A file with fewer than half or more than twice as many labels as the model has classes is
    another model's (5 labels for a 1001-class ImageNet model): refused, ConfigError. Any
    other mismatch (a background line more or less: every label off by one; a sparse ``ID label`` file) is only
    warned about: the ids and scores are right, a class without a label is shown by its id.
    """
    top = max(labels) + 1  # ids run from 0
    if top == classes:
        return None
    if top < classes / 2 or top > 2 * classes:
        raise ConfigError(
            f"labels file {path} has {top} labels for a model of {classes} classes: it is another model's labels file"
        )
    return (
        f"labels file {path} has {top} labels for a model of {classes} classes: classes without a label show their id"
    )
