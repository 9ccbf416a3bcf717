"""Results as log lines, at most one per interval per stream (never one per frame at INFO).

A result may carry annotations from its source (:attr:`edged.result.Result.annotations`);
the log sink does not know what they mean. A module that does registers an
:class:`AnnotationScorer` for its annotation key (:func:`register_scorer`): each log sink
then keeps one scorer per key, gives it every result that carries the key, and ends each
line with the scorer's note (the demo's running accuracy against its ``truth``, see
:mod:`edged.demo.truth`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Literal, Optional, Protocol

from pydantic import Field

from ..registry import SINKS, StrictConfig
from ..result import Result
from .base import Sink, SinkContext

log = logging.getLogger("edged.results")


@dataclass(frozen=True)
class ScoreNote:
    """What a scorer adds to a log line."""

    text: str  # appended to the line as is, e.g. " | truth 7, running accuracy 98.0% of 50"
    boxes: bool = False  # list the objects with their boxes instead of the short summary


class AnnotationScorer(Protocol):
    """Judges the results of one stream against one annotation (one per log sink and key)."""

    def add(self, value: object, result: Result) -> None:
        """Take one result carrying the annotation ``value`` (every result, logged or not)."""

    def note(self, value: object, result: Result) -> Optional[ScoreNote]:
        """What the line of ``result`` (a logged one, after ``add``) says about it, if anything."""


_SCORERS: Dict[str, Callable[[], AnnotationScorer]] = {}


def register_scorer(key: str, factory: Callable[[], AnnotationScorer]) -> None:
    """Score the annotation ``key`` of results in every log sink with a scorer ``factory()`` makes."""
    _SCORERS[key] = factory


def _boxes(objects: list[dict[str, Any]], most: int = 5) -> str:
    items = [
        f"{o.label} {o.score:.2f} at ({o.box.xmin:.0f},{o.box.ymin:.0f})-({o.box.xmax:.0f},{o.box.ymax:.0f})"
        for o in objects[:most]
    ]
    if len(objects) > most:
        items.append(f"+{len(objects) - most} more")
    return f"{len(objects)} object{'' if len(objects) == 1 else 's'}" + (f": {', '.join(items)}" if items else "")


class LogSinkConfig(StrictConfig):
    """Log results as human lines (rate limited: one line per interval per stream)."""

    type: Literal["log"] = "log"
    interval: float = Field(1.0, ge=0, description="seconds between two logged results of a stream (0: every result)")


class LogSink(Sink):
    name = "log"

    def __init__(self, cfg: LogSinkConfig, stream: str) -> None:
        self.interval = cfg.interval
        self.stream = stream
        self._last = 0.0
        self._skipped = 0
        self._scorers: Dict[str, AnnotationScorer] = {}

    def _scored(self, result: Result) -> List[tuple[AnnotationScorer, Any]]:
        """The scorers of the annotations ``result`` carries, with their values."""
        scored = []
        for key, value in (result.annotations or {}).items():
            if value is None or key not in _SCORERS:
                continue
            scorer = self._scorers.get(key)
            if scorer is None:
                scorer = self._scorers[key] = _SCORERS[key]()
            scored.append((scorer, value))
        return scored

    def publish(self, result: Result) -> None:
        scored = self._scored(result)
        for scorer, value in scored:
            scorer.add(value, result)
        now = time.monotonic()
        if self.interval and now - self._last < self.interval:
            self._skipped += 1
            return
        self._last = now
        lat = result.latency_ms
        notes = [n for n in (scorer.note(value, result) for scorer, value in scored) if n is not None]
        summary = _boxes(result.objects or []) if any(n.boxes for n in notes) else result.summary()
        log.info(
            "%s #%d %s: %s | %.1f ms (infer %.1f ms)%s",
            result.stream,
            result.seq,
            result.accelerator,
            summary,
            lat.get("total", 0.0),
            lat.get("inference", 0.0),
            "".join(n.text for n in notes),
            extra={
                "result": result.to_dict(),
                "skipped": self._skipped,
                "stream": result.stream,
                "accelerator": result.accelerator,
            },
        )
        self._skipped = 0


def _make(cfg: LogSinkConfig, ctx: SinkContext) -> LogSink:
    return LogSink(cfg, ctx.stream)


SINKS.register("log", LogSinkConfig, _make)
