"""Results as log lines, at most one per interval per stream (never one per frame at INFO)."""

from __future__ import annotations

import logging
import time
from typing import Any

from ..result import Result
from .base import Sink

log = logging.getLogger("edged.results")


class LogSink(Sink):
    name = "log"

    def __init__(self, cfg: Any, stream: str) -> None:
        self.interval = cfg.interval
        self.stream = stream
        self._last = 0.0
        self._skipped = 0
        self._truth_hits = 0
        self._truth_seen = 0

    def publish(self, result: Result) -> None:
        if result.truth is not None and result.classes is not None:
            self._truth_seen += 1
            label = result.truth.get("label") if isinstance(result.truth, dict) else result.truth
            if result.classes and result.classes[0]["label"] == label:
                self._truth_hits += 1
        now = time.monotonic()
        if self.interval and now - self._last < self.interval:
            self._skipped += 1
            return
        self._last = now
        lat = result.latency_ms
        extra = ""
        if result.truth is not None and self._truth_seen:
            label = result.truth.get("label") if isinstance(result.truth, dict) else result.truth
            extra = (
                f" | truth {label}, running accuracy {self._truth_hits / self._truth_seen:.1%} of {self._truth_seen}"
            )
        log.info(
            "%s #%d %s: %s | %.1f ms (infer %.1f ms)%s",
            result.stream,
            result.seq,
            result.accelerator,
            result.summary(),
            lat.get("total", 0.0),
            lat.get("inference", 0.0),
            extra,
            extra={"result": result.to_dict(), "skipped": self._skipped},
        )
        self._skipped = 0
