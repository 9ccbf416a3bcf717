"""A result drawn over its frame: the snapshot of the HTTP API and the live page."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

_COLOURS = [(0, 200, 255), (255, 120, 0), (80, 220, 80), (230, 60, 230), (60, 60, 255), (255, 220, 0)]


def _label(img: np.ndarray, text: str, x: int, y: int, colour: tuple[int, int, int], scale: float) -> None:
    thick = max(1, int(round(scale * 2)))
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    y = max(y, th + base + 2)
    cv2.rectangle(img, (x, y - th - base - 2), (x + tw + 4, y), colour, -1)
    cv2.putText(img, text, (x + 2, y - base - 1), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thick, cv2.LINE_AA)


def annotate(image: np.ndarray, result: dict[str, Any]) -> np.ndarray:
    """A copy of ``image`` (BGR) with the result's boxes and labels, or its top classes."""
    img = image.copy() if image.ndim == 3 else cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    h, w = img.shape[:2]
    scale = max(0.4, min(w, h) / 720)
    for o in result.get("objects") or []:
        b = o["box"]
        colour = _COLOURS[int(o.get("id", 0)) % len(_COLOURS)]
        x0, y0, x1, y1 = (int(round(b[k])) for k in ("xmin", "ymin", "xmax", "ymax"))
        cv2.rectangle(img, (x0, y0), (x1, y1), colour, max(1, int(round(scale * 2))))
        _label(img, f"{o['label']} {o['score']:.2f}", x0, y0, colour, scale * 0.6)
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
