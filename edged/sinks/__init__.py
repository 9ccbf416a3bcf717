"""Result sinks: where results go. Each has ``start()``, ``publish(result)`` and ``close()``.

Each kind of sink is chosen by the ``type`` field of its configuration; a kind registers its
configuration class and its factory ``(cfg, ctx: SinkContext) -> Sink`` in
:data:`edged.registry.SINKS` in the module of its implementation (importing this package
registers the kinds it holds; the mqtt kind registers from :mod:`edged.config`).
"""

from __future__ import annotations

from ..registry import SINKS, KindConfig
from . import jsonl, log  # noqa: F401 - they register their kinds
from .base import SceneDescription, SceneReport, Sink, SinkContext, Snapshot
from .mqtt import config as _mqtt  # noqa: F401 - registers the mqtt kind


def make_sink(cfg: KindConfig, ctx: SinkContext) -> Sink:
    """Build the sink a config section describes, for the stream ``ctx`` names (not yet started)."""
    return SINKS.get(cfg.type).factory(cfg, ctx)


__all__ = ["SceneDescription", "SceneReport", "Sink", "SinkContext", "Snapshot", "make_sink"]
