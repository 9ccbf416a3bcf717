"""The one result schema used by the CLI and every sink (see docs/result-schema.md)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Optional

if TYPE_CHECKING:
    from .inference import Output
    from .model import ModelInfo
    from .sources import Frame

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Box:
    """A box in source-frame pixels."""

    xmin: float
    ymin: float
    xmax: float
    ymax: float

    @property
    def area(self) -> float:
        return max(0.0, self.xmax - self.xmin) * max(0.0, self.ymax - self.ymin)

    def iou(self, other: Box) -> float:
        """Intersection over union with ``other`` (0 when either box is empty)."""
        ix = max(0.0, min(self.xmax, other.xmax) - max(self.xmin, other.xmin))
        iy = max(0.0, min(self.ymax, other.ymax) - max(self.ymin, other.ymin))
        inter = ix * iy
        union = self.area + other.area - inter
        return inter / union if union > 0 else 0.0

    def to_dict(self) -> dict[str, float]:
        return {"xmin": self.xmin, "ymin": self.ymin, "xmax": self.xmax, "ymax": self.ymax}


@dataclass(frozen=True)
class Class:
    """One class of a classification result."""

    class_id: int
    label: str
    score: float

    def to_dict(self) -> dict[str, Any]:
        # "id": the class id under its old name, kept for one release (docs/result-schema.md)
        return {"class_id": self.class_id, "id": self.class_id, "label": self.label, "score": self.score}


@dataclass(frozen=True)
class Object:
    """One detected object: its class, score and box; once tracked (edged.tracking), its track id,
    the zones it is in and whether it stands still."""

    class_id: int
    label: str
    score: float
    box: Box
    track_id: Optional[int] = None
    zones: tuple[str, ...] = ()
    stationary: bool = False

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"class_id": self.class_id, "id": self.class_id, "label": self.label, "score": self.score}
        d["box"] = self.box.to_dict()
        if self.track_id is not None:
            d["track_id"] = self.track_id
            d["zones"] = list(self.zones)
            d["stationary"] = self.stationary
        return d


@dataclass
class Result:
    stream: str
    seq: int
    timestamp: float  # wall-clock capture time, Unix seconds
    model: str
    accelerator: str  # "cpu" | "edgetpu"
    task: str  # "classification" | "detection"
    frame_width: int
    frame_height: int
    classes: list[Class] | None = None
    objects: list[Object] | None = None
    latency_ms: dict[str, float] = field(default_factory=dict)
    source: str | None = None  # image path for one-shot inference
    # what the source attached to the frame (the demo's synthetic source: {"truth": ...}), opaque
    # to the core; to_dict() adds each key to the JSON (never over a key of the schema)
    annotations: Mapping[str, Any] | None = None

    _json: str | None = field(default=None, init=False, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "schema": SCHEMA_VERSION,
            "stream": self.stream,
            "seq": self.seq,
            "timestamp": round(self.timestamp, 6),
            "model": self.model,
            "accelerator": self.accelerator,
            "task": self.task,
            "frame": {"width": self.frame_width, "height": self.frame_height},
        }
        if self.source is not None:
            d["source"] = self.source
        if self.task == "classification":
            d["classes"] = [c.to_dict() for c in self.classes or []]
        else:
            d["objects"] = [o.to_dict() for o in self.objects or []]
        d["latency_ms"] = {k: round(v, 3) for k, v in self.latency_ms.items()}
        for key, value in (self.annotations or {}).items():
            if value is not None and key not in d:
                d[key] = value
        return d

    def to_json(self) -> str:
        """The JSON of :meth:`to_dict`, made once (every sink of a stream sends the same text)."""
        if self._json is None:
            self._json = json.dumps(self.to_dict(), separators=(",", ":"), ensure_ascii=False)
        return self._json

    def summary(self) -> str:
        """A short human line: the best classes or the objects found."""
        if self.task == "classification":
            items = [f"{c.label} {c.score:.2f}" for c in (self.classes or [])[:3]]
        else:
            items = [f"{o.label} {o.score:.2f}" for o in (self.objects or [])[:5]]
            more = len(self.objects or []) - 5
            if more > 0:
                items.append(f"+{more} more")
        return ", ".join(items) if items else "(nothing above threshold)"


def build_result(stream: str, frame: Frame, out: Output, info: ModelInfo, queued: Optional[float] = None) -> Result:
    """The result of ``frame``: what the model found and the milliseconds of each stage.

    ``queued`` is the time the prepared frame waited for the inference thread (a stream's
    frames); a one-shot inference (``edged infer``) has no queue. ``total`` runs from the
    start of the frame's capture to now.
    """
    h, w = frame.image.shape[:2]
    latency = {"capture": frame.capture_seconds * 1e3}
    if queued is not None:
        latency["queue"] = queued * 1e3
    latency.update({k: v * 1e3 for k, v in out.timings.items()})
    latency["total"] = (time.monotonic() - frame.monotonic) * 1e3
    return Result(
        stream=stream,
        seq=frame.seq,
        timestamp=frame.timestamp,
        model=info.name,
        accelerator=out.accelerator,
        task=info.task,
        frame_width=w,
        frame_height=h,
        classes=out.classes,
        objects=out.objects,
        source=frame.origin,
        annotations=frame.annotations,
        latency_ms=latency,
    )
