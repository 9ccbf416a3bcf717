"""Output tensors to results: dequantise, top-k classes, detected objects in source pixels.

Pure functions over numpy arrays, in the manner of pycoral's adapters.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .preprocess import Transform, dequantize


def label_for(labels: dict[int, str] | None, class_id: int) -> str:
    if labels and class_id in labels:
        return labels[class_id]
    return str(class_id)


def classify(
    scores: np.ndarray, top_k: int = 3, threshold: float = 0.0, labels: dict[int, str] | None = None
) -> list[dict[str, Any]]:
    """The ``top_k`` classes whose (dequantised) score is at least ``threshold``, best first."""
    s = np.asarray(scores, dtype=np.float32).reshape(-1)
    k = max(0, min(top_k, s.size))
    if k == 0:
        return []
    idx = np.argpartition(-s, k - 1)[:k] if k < s.size else np.arange(s.size)
    idx = idx[np.argsort(-s[idx], kind="stable")]
    return [
        {"id": int(i), "label": label_for(labels, int(i)), "score": round(float(s[i]), 5)}
        for i in idx
        if s[i] >= threshold
    ]


def classify_quantized(
    q: np.ndarray,
    scale: float,
    zero_point: int,
    top_k: int = 3,
    threshold: float = 0.0,
    labels: dict[int, str] | None = None,
) -> list[dict[str, Any]]:
    """:func:`classify` on a quantised output, dequantising only the entries it keeps."""
    flat = np.asarray(q).reshape(-1)
    if scale == 0.0:
        return classify(flat, top_k, threshold, labels)
    k = max(0, min(top_k, flat.size))
    if k == 0:
        return []
    # quantisation is monotonic for scale > 0: rank on the integers
    idx = np.argpartition(-flat.astype(np.int32), k - 1)[:k] if k < flat.size else np.arange(flat.size)
    values = dequantize(flat[idx], scale, zero_point)
    order = np.argsort(-values, kind="stable")
    return [
        {"id": int(idx[o]), "label": label_for(labels, int(idx[o])), "score": round(float(values[o]), 5)}
        for o in order
        if values[o] >= threshold
    ]


def detect(
    boxes: np.ndarray,
    classes: np.ndarray,
    scores: np.ndarray,
    count: int | float | np.ndarray,
    transform: Transform,
    input_width: int,
    input_height: int,
    threshold: float = 0.5,
    labels: dict[int, str] | None = None,
    top_k: int | None = None,
) -> list[dict[str, Any]]:
    """Objects of an SSD (TFLite_Detection_PostProcess) output above ``threshold``.

    ``boxes`` are ``[ymin, xmin, ymax, xmax]`` normalised to the model input; they are
    mapped to input pixels, back through the letterbox or stretch to source-frame
    pixels, and clipped to the frame.
    """
    n = int(np.asarray(count).reshape(-1)[0]) if np.size(count) else 0
    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    s = np.asarray(scores, dtype=np.float32).reshape(-1)
    c = np.asarray(classes).reshape(-1)
    n = max(0, min(n, b.shape[0], s.size, c.size))
    keep = np.nonzero(s[:n] >= threshold)[0]
    if top_k is not None:
        keep = keep[np.argsort(-s[keep], kind="stable")][:top_k]
    if keep.size == 0:
        return []
    sel = b[keep]
    x0, y0 = transform.to_source(sel[:, 1] * input_width, sel[:, 0] * input_height)
    x1, y1 = transform.to_source(sel[:, 3] * input_width, sel[:, 2] * input_height)
    w, h = transform.src_width, transform.src_height
    x0, x1 = np.clip(x0, 0, w), np.clip(x1, 0, w)
    y0, y1 = np.clip(y0, 0, h), np.clip(y1, 0, h)
    out = []
    for j, i in enumerate(keep):
        cid = int(c[i])
        out.append(
            {
                "id": cid,
                "label": label_for(labels, cid),
                "score": round(float(s[i]), 5),
                "box": {
                    "xmin": round(float(x0[j]), 1),
                    "ymin": round(float(y0[j]), 1),
                    "xmax": round(float(x1[j]), 1),
                    "ymax": round(float(y1[j]), 1),
                },
            }
        )
    return out
