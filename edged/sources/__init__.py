"""Frame sources behind one small protocol (see :class:`edged.sources.base.Source`).

Each kind of source is chosen by the ``type`` field of its configuration; a kind registers
its configuration class and its factory in :data:`edged.registry.SOURCES` in the module of
its implementation (importing this package registers the kinds it holds).
"""

from __future__ import annotations

from ..registry import SOURCES, KindConfig
from . import camera, images, network, video  # noqa: F401 - they register their kinds
from .base import Frame, Source


def make_source(cfg: KindConfig, name: str = "") -> Source:
    """Build the source a config section describes (not yet opened)."""
    return SOURCES.get(cfg.type).factory(cfg, name)


__all__ = ["Frame", "Source", "make_source"]
