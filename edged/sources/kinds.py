"""Importing this module registers the source kinds of :mod:`edged.sources` (see its docstring)."""

from __future__ import annotations

from . import camera, images, network, video  # noqa: F401 - they register their kinds
