"""A result drawn over its frame: the snapshot of the HTTP API and the live page."""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import cv2
import numpy as np


class ZoneOverlay(NamedTuple):
    """A zone as drawn on a snapshot: its name, its polygon in frame pixels, how many are in it now."""

    name: str
    points: Sequence[tuple[float, float]]
    count: int


_ZONE, _ZONE_OCCUPIED = (0, 215, 255), (60, 60, 255)  # BGR: amber, red when something is in it

_COLOURS = [(0, 200, 255), (255, 120, 0), (80, 220, 80), (230, 60, 230), (60, 60, 255), (255, 220, 0)]


def _label(img: np.ndarray, text: str, x: int, y: int, colour: tuple[int, int, int], scale: float) -> None:
    thick = max(1, int(round(scale * 2)))
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    y = max(y, th + base + 2)
    cv2.rectangle(img, (x, y - th - base - 2), (x + tw + 4, y), colour, -1)
    cv2.putText(img, text, (x + 2, y - base - 1), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thick, cv2.LINE_AA)


def annotate(image: np.ndarray, result: dict[str, Any], zones: Sequence[ZoneOverlay] = ()) -> np.ndarray:
    """A copy of ``image`` (BGR) with the zones (outlined, red while occupied, with their count),
    the result's boxes and labels (``#track`` once tracked), or its top classes."""
    img = image.copy() if image.ndim == 3 else cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    h, w = img.shape[:2]
    scale = max(0.4, min(w, h) / 720)
    thick = max(1, int(round(scale * 2)))
    for z in zones:
        pts = np.array([[int(round(x)), int(round(y))] for x, y in z.points], np.int32)
        colour = _ZONE_OCCUPIED if z.count else _ZONE
        cv2.polylines(img, [pts], True, colour, thick, cv2.LINE_AA)
        x, y = pts.min(axis=0)
        _label(img, f"{z.name}: {z.count}", int(x) + 2, int(y) + int(24 * scale), colour, scale * 0.55)
    for o in result.get("objects") or []:
        b = o["box"]
        colour = _COLOURS[int(o.get("class_id", 0)) % len(_COLOURS)]
        x0, y0, x1, y1 = (int(round(b[k])) for k in ("xmin", "ymin", "xmax", "ymax"))
        cv2.rectangle(img, (x0, y0), (x1, y1), colour, thick)
        track = f" #{o['track_id']}" if o.get("track_id") is not None else ""
        _label(img, f"{o['label']}{track} {o['score']:.2f}", x0, y0, colour, scale * 0.6)
    y = 0
    for c in (result.get("classes") or [])[:3]:
        (th) = int(28 * scale)
        y += th
        _label(img, f"{c['label']} {c['score']:.2f}", 4, y, (255, 255, 255), scale * 0.7)
    return img


def jpeg(image: np.ndarray, quality: int = 80) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:  # pragma: no cover - OpenCV encodes any BGR image
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()
