"""The one result schema used by the CLI and every sink (see docs/result-schema.md)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

SCHEMA_VERSION = 1
STAGES = ("capture", "queue", "preprocess", "inference", "postprocess")


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
    classes: list[dict[str, Any]] | None = None
    objects: list[dict[str, Any]] | None = None
    latency_ms: dict[str, float] = field(default_factory=dict)
    source: str | None = None  # image path for one-shot inference
    truth: Any = None  # what a synthetic source drew (demo only)

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
            d["classes"] = self.classes or []
        else:
            d["objects"] = self.objects or []
        d["latency_ms"] = {k: round(v, 3) for k, v in self.latency_ms.items()}
        if self.truth is not None:
            d["truth"] = self.truth
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), ensure_ascii=False)

    def summary(self) -> str:
        """A short human line: the best classes or the objects found."""
        if self.task == "classification":
            items = [f"{c['label']} {c['score']:.2f}" for c in (self.classes or [])[:3]]
        else:
            items = [f"{o['label']} {o['score']:.2f}" for o in (self.objects or [])[:5]]
            more = len(self.objects or []) - 5
            if more > 0:
                items.append(f"+{more} more")
        return ", ".join(items) if items else "(nothing above threshold)"
