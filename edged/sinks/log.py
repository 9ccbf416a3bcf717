"""Results as log lines, at most one per interval per stream (never one per frame at INFO)."""

from __future__ import annotations

import logging
import time
from typing import Any, Literal

from pydantic import Field

from ..registry import SINKS, StrictConfig
from ..result import Result
from .base import Sink, SinkContext

log = logging.getLogger("edged.results")

TRUTH_IOU = 0.5  # a detection is right when it overlaps a drawn digit of its label by at least this


def box_iou(a: dict[str, float], b: dict[str, float]) -> float:
    """Intersection over union of two ``{xmin, ymin, xmax, ymax}`` boxes."""
    ix = max(0.0, min(a["xmax"], b["xmax"]) - max(a["xmin"], b["xmin"]))
    iy = max(0.0, min(a["ymax"], b["ymax"]) - max(a["ymin"], b["ymin"]))
    inter = ix * iy
    union = (a["xmax"] - a["xmin"]) * (a["ymax"] - a["ymin"]) + (b["xmax"] - b["xmin"]) * (b["ymax"] - b["ymin"])
    return inter / (union - inter) if union > inter else 0.0


def match_truth(objects: list[dict[str, Any]], truth: list[dict[str, Any]], iou_min: float = TRUTH_IOU) -> int:
    """How many of ``objects`` are true positives: taken best score first, a detection matches
    the unmatched truth box of the same label that it overlaps most, at IoU >= ``iou_min``
    (each truth box matches at most one detection; the others are false positives)."""
    used = [False] * len(truth)
    tp = 0
    for o in sorted(objects, key=lambda o: -float(o.get("score", 0.0))):
        best, bi = iou_min, -1
        for j, t in enumerate(truth):
            if not used[j] and str(t["label"]) == str(o["label"]):
                v = box_iou(o["box"], t["box"])
                if v >= best:
                    best, bi = v, j
        if bi >= 0:
            used[bi] = True
            tp += 1
    return tp


class DetectionTally:
    """Running precision and recall of detections against the boxes a synthetic source drew."""

    def __init__(self) -> None:
        self.frames = self.tp = self.detections = self.truths = 0

    def add(self, objects: list[dict[str, Any]], truth: list[dict[str, Any]]) -> None:
        self.frames += 1
        self.tp += match_truth(objects, truth)
        self.detections += len(objects)
        self.truths += len(truth)

    @property
    def precision(self) -> float:
        return self.tp / self.detections if self.detections else 1.0

    @property
    def recall(self) -> float:
        return self.tp / self.truths if self.truths else 1.0


def _boxes(objects: list[dict[str, Any]], most: int = 5) -> str:
    items = [
        f"{o['label']} {o['score']:.2f} at ({o['box']['xmin']:.0f},{o['box']['ymin']:.0f})-"
        f"({o['box']['xmax']:.0f},{o['box']['ymax']:.0f})"
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
        self._truth_hits = 0
        self._truth_seen = 0
        self._tally = DetectionTally()

    def publish(self, result: Result) -> None:
        truth_objects = result.truth.get("objects") if isinstance(result.truth, dict) else None
        detection_truth = truth_objects is not None and result.objects is not None
        if detection_truth:
            self._tally.add(result.objects or [], truth_objects or [])
        elif result.truth is not None and result.classes is not None:
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
        summary = result.summary()
        if detection_truth:
            t, n_truth = self._tally, len(truth_objects or [])
            summary = _boxes(result.objects or [])
            extra = (
                f" | truth {n_truth} digit{'' if n_truth == 1 else 's'}, precision {t.precision:.1%}"
                f" recall {t.recall:.1%}"
                f" over {t.frames} frames"
            )
        elif result.truth is not None and self._truth_seen:
            label = result.truth.get("label") if isinstance(result.truth, dict) else result.truth
            extra = (
                f" | truth {label}, running accuracy {self._truth_hits / self._truth_seen:.1%} of {self._truth_seen}"
            )
        log.info(
            "%s #%d %s: %s | %.1f ms (infer %.1f ms)%s",
            result.stream,
            result.seq,
            result.accelerator,
            summary,
            lat.get("total", 0.0),
            lat.get("inference", 0.0),
            extra,
            extra={"result": result.to_dict(), "skipped": self._skipped},
        )
        self._skipped = 0


def _make(cfg: LogSinkConfig, ctx: SinkContext) -> LogSink:
    return LogSink(cfg, ctx.stream)


SINKS.register("log", LogSinkConfig, _make)
