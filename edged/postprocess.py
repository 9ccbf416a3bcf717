"""Output tensors to results: dequantise, top-k classes, detected objects in source pixels.

Pure functions over numpy arrays, in the manner of pycoral's adapters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from .preprocess import Transform, dequantize
from .result import Box, Class, Object


def label_for(labels: dict[int, str] | None, class_id: int) -> str:
    if labels and class_id in labels:
        return labels[class_id]
    return str(class_id)


def classify(
    scores: np.ndarray, top_k: int = 3, threshold: float = 0.0, labels: dict[int, str] | None = None
) -> list[Class]:
    """The ``top_k`` classes whose (dequantised) score is at least ``threshold``, best first."""
    s = np.asarray(scores, dtype=np.float32).reshape(-1)
    k = max(0, min(top_k, s.size))
    if k == 0:
        return []
    idx = np.argpartition(-s, k - 1)[:k] if k < s.size else np.arange(s.size)
    idx = idx[np.argsort(-s[idx], kind="stable")]
    return [Class(int(i), label_for(labels, int(i)), round(float(s[i]), 5)) for i in idx if s[i] >= threshold]


def classify_quantized(
    q: np.ndarray,
    scale: float,
    zero_point: int,
    top_k: int = 3,
    threshold: float = 0.0,
    labels: dict[int, str] | None = None,
) -> list[Class]:
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
        Class(int(idx[o]), label_for(labels, int(idx[o])), round(float(values[o]), 5))
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
) -> list[Object]:
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
    xyxy = np.stack(
        [sel[:, 1] * input_width, sel[:, 0] * input_height, sel[:, 3] * input_width, sel[:, 2] * input_height], 1
    )
    return _objects(xyxy, c[keep], s[keep], labels, transform)


def _objects(
    xyxy: np.ndarray, cls: np.ndarray, scores: np.ndarray, labels: dict[int, str] | None, transform: Transform
) -> list[Object]:
    """Boxes in input pixels (x0, y0, x1, y1 rows) -> result objects in source pixels, clipped to the frame."""
    x0, y0 = transform.to_source(xyxy[:, 0], xyxy[:, 1])
    x1, y1 = transform.to_source(xyxy[:, 2], xyxy[:, 3])
    w, h = transform.src_width, transform.src_height
    x0, x1 = np.clip(x0, 0, w), np.clip(x1, 0, w)
    y0, y1 = np.clip(y0, 0, h), np.clip(y1, 0, h)
    out = []
    for j in range(len(xyxy)):
        cid = int(cls[j])
        box = Box(round(float(x0[j]), 1), round(float(y0[j]), 1), round(float(x1[j]), 1), round(float(y1[j]), 1))
        out.append(Object(cid, label_for(labels, cid), round(float(scores[j]), 5), box))
    return out


# --------------------------------------------------------------------------- YOLO (Ultralytics v8/v11) outputs

YOLO_BOX_FORMATS = ("auto", "normalized", "pixels")
# "auto": boxes are normalised when the largest box value of the frame is at most this. Every
# anchor gives a box, and the anchors cover the whole input, so pixel boxes reach tens of pixels
# at least while normalised ones stay near [0, 1].
NORMALIZED_MAX = 2.0


def quantized_threshold(threshold: float, scale: float, zero_point: int, dtype: str | np.dtype) -> int | None:
    """The smallest raw value ``q`` of ``dtype`` whose dequantised value is at least ``threshold``
    (``None`` when none is), so that ``q_raw >= q`` is exactly ``dequantize(q_raw) >= threshold``.

    Computed from scale and zero point, then checked with :func:`dequantize` itself, so float
    rounding at the boundary cannot make the two disagree. The comparison is in float32, as
    numpy compares a float32 array with a Python float. ``scale`` must be positive.
    """
    info = np.iinfo(np.dtype(dtype))
    lo, hi = int(info.min), int(info.max)
    t = np.float32(threshold)

    def real(q: int) -> np.float32:
        return dequantize(np.array([q], dtype=np.int32), scale, zero_point)[0]

    q = min(max(math.ceil(zero_point + threshold / scale), lo), hi + 1)
    while q > lo and real(q - 1) >= t:
        q -= 1
    while q <= hi and real(q) < t:
        q += 1
    return q if q <= hi else None


def nms(
    boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou_threshold: float = 0.45, max_keep: int = 300
) -> np.ndarray:
    """Greedy class-aware non-maximum suppression; the indices kept, best score first.

    ``boxes`` are ``[K, 4]`` as ``x0, y0, x1, y1``. The best remaining box is kept and every
    box of the same class overlapping it with IoU above ``iou_threshold`` is dropped (boxes of
    other classes never suppress each other), until ``max_keep`` are kept or none remain.
    Equal scores keep their input order.
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    s = np.asarray(scores).reshape(-1)
    c = np.asarray(classes).reshape(-1)
    area = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    order = np.argsort(-s.astype(np.float64), kind="stable")
    keep: list[int] = []
    while order.size and len(keep) < max_keep:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        pos = np.flatnonzero(c[rest] == c[i])  # positions in rest of the boxes of its class
        if pos.size == 0:
            order = rest
            continue
        same = rest[pos]
        iw = np.clip(np.minimum(b[i, 2], b[same, 2]) - np.maximum(b[i, 0], b[same, 0]), 0, None)
        ih = np.clip(np.minimum(b[i, 3], b[same, 3]) - np.maximum(b[i, 1], b[same, 1]), 0, None)
        inter = iw * ih
        union = area[i] + area[same] - inter
        iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        drop = pos[iou > iou_threshold]
        if drop.size:
            alive = np.ones(rest.size, dtype=bool)
            alive[drop] = False
            rest = rest[alive]
        order = rest
    return np.asarray(keep, dtype=np.intp)


NMS_CHUNK = 1024  # nms_opencv's candidates per OpenCV call, at least (4 * max_keep when more)


def nms_opencv(
    boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou_threshold: float = 0.45, max_keep: int = 300
) -> np.ndarray:
    """:func:`nms` through OpenCV's ``cv2.dnn.NMSBoxesBatched``: the same indices, best first.

    OpenCV takes ``x, y, w, h`` boxes (given in float64, as ``Rect2d``), keeps scores strictly
    above its score threshold (given below every score: the caller has thresholded already)
    and sorts equal scores stably, as :func:`nms` does. It cannot stop after ``max_keep`` kept
    boxes (its ``top_k`` caps the candidates before NMS), and a full NMS of thousands of
    candidates that keeps thousands costs far more than keeping ``max_keep``. Greedy NMS
    decides each candidate from the better ones alone, so the candidates go through OpenCV in
    chunks, best first, each with the boxes kept so far put ahead of it (scored above every
    candidate: they stay kept and suppress as they would have), until ``max_keep`` are kept.

    OpenCV computes the IoU in float32 (after offsetting each class's boxes by the class id
    times the largest coordinate), so an IoU within about 1e-7 of ``iou_threshold`` can fall
    on the other side than in :func:`nms`; an exact one (integral boxes) does not.
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if b.shape[0] == 0 or max_keep <= 0:
        return np.zeros(0, dtype=np.intp)
    s = np.asarray(scores, dtype=np.float32).reshape(-1)
    order = np.argsort(-s, kind="stable")
    b, s, cls = b[order], s[order], np.asarray(classes).reshape(-1)[order].astype(np.int32)
    xywh = np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], axis=1)
    floor = float(np.nextafter(s[-1], np.float32(-np.inf)))
    top = np.nextafter(s[0], np.float32(np.inf))  # above every score: the boxes kept so far go first
    chunk = max(NMS_CHUNK, 4 * max_keep)
    kept = np.zeros(0, dtype=np.intp)  # positions in the sorted order
    for start in range(0, s.size, chunk):
        idx = np.concatenate([kept, np.arange(start, min(s.size, start + chunk))])
        sc = s[idx]
        sc[: kept.size] = top
        picked = np.sort(np.asarray(cv2.dnn.NMSBoxesBatched(xywh[idx], sc, cls[idx], floor, float(iou_threshold))))
        kept = np.concatenate([kept, idx[picked[picked >= kept.size].astype(np.intp)]])
        if kept.size >= max_keep:
            break
    return order[kept[:max_keep]]


@dataclass(frozen=True)
class YoloOptions:
    """What a YOLO decode keeps, whatever the layout: anchors (or rows) scoring at least
    ``threshold``, through class-aware NMS at ``iou_threshold`` (not for an end-to-end export),
    at most ``max_detections`` and ``top_k`` of them; ``box_format`` (``auto``, ``pixels``,
    ``normalized``) says how the boxes are given; ``labels`` names the classes."""

    threshold: float = 0.5
    iou_threshold: float = 0.45
    max_detections: int = 300
    box_format: str = "auto"
    labels: dict[int, str] | None = None
    top_k: int | None = None

    @property
    def cap(self) -> int:
        """How many objects are kept at most."""
        return max(0, self.max_detections if self.top_k is None else min(self.top_k, self.max_detections))


DEFAULT_YOLO = YoloOptions()


def detect_yolo(
    output: np.ndarray,
    transform: Transform,
    input_width: int,
    input_height: int,
    *,
    channels_first: bool = True,
    scale: float = 0.0,
    zero_point: int = 0,
    options: YoloOptions = DEFAULT_YOLO,
) -> list[Object]:
    """Objects of an Ultralytics YOLO (v8/v11) output ``[1, 4 + C, N]`` (or ``[1, N, 4 + C]``
    when not ``channels_first``), in the same form as :func:`detect`.

    Rows 0..3 are the box centre x, centre y, width and height, in input pixels or normalised
    to the input (``options.box_format``; ``auto`` tells them apart by the largest box value of
    the frame); the other C rows are class scores (no objectness). Each anchor keeps its best
    class; anchors scoring at least the threshold go through class-aware NMS in input pixels
    (:func:`nms_opencv`), at most ``options.cap`` of them, best first; their boxes are mapped
    back through the letterbox or stretch to source pixels and clipped to the frame.

    For a quantised output (``scale`` > 0) the threshold is compared with the raw class scores
    (:func:`quantized_threshold`); only the anchors that pass are dequantised.
    """
    a = np.asarray(output)
    a = a.reshape(a.shape[-2:])
    rows = a if channels_first else a.T  # [4 + C, N], a view
    if rows.shape[0] < 5 or rows.shape[1] == 0:
        _check_box_format(options.box_format)
        return []
    q = (scale, zero_point)
    return detect_yolo_rows(rows[:4], rows[4:], transform, input_width, input_height, q, q, options)


def _check_box_format(box_format: str) -> None:
    if box_format not in YOLO_BOX_FORMATS:
        raise ValueError(f"box format must be one of {', '.join(YOLO_BOX_FORMATS)}, not {box_format!r}")


def detect_yolo_rows(
    box_rows: np.ndarray,
    class_rows: np.ndarray,
    transform: Transform,
    input_width: int,
    input_height: int,
    box_quant: tuple[float, int] = (0.0, 0),
    score_quant: tuple[float, int] = (0.0, 0),
    options: YoloOptions = DEFAULT_YOLO,
) -> list[Object]:
    """:func:`detect_yolo` on the box rows ``[4, N]`` and class rows ``[C, N]`` of a head, each
    with its own quantisation (``(scale, zero_point)``, scale 0 for a float tensor): the one
    tensor of a single-output export, or the two of a split head."""
    _check_box_format(options.box_format)
    if class_rows.shape[0] == 0 or class_rows.shape[1] == 0:
        return []
    picked = _yolo_candidates(class_rows, class_rows.dtype, score_quant[0], score_quant[1], options.threshold)
    if picked is None:
        return []
    cand, scale = picked
    sub = class_rows[:, cand]
    cls = sub.argmax(axis=0)
    scores = dequantize(sub[cls, np.arange(cand.size)], scale, score_quant[1])
    bscale = box_quant[0] if box_rows.dtype in (np.uint8, np.int8) else 0.0
    xyxy = _yolo_boxes(box_rows, cand, bscale, box_quant[1], options.box_format, input_width, input_height)
    keep = nms_opencv(xyxy, scores, cls, options.iou_threshold, options.cap)
    if keep.size == 0:
        return []
    return _objects(xyxy[keep], cls[keep], scores[keep], options.labels, transform)


def _yolo_candidates(
    class_rows: np.ndarray, dtype: np.dtype, scale: float, zero_point: int, threshold: float
) -> tuple[np.ndarray, float] | None:
    """The anchors whose best class score reaches ``threshold``, and the scale to dequantise them
    with (0 for a float output); None when no anchor can."""
    quantized = scale > 0.0 and dtype in (np.uint8, np.int8)
    if quantized:
        q = quantized_threshold(threshold, scale, zero_point, dtype)
        if q is None:
            return None
        cand = np.flatnonzero(class_rows.max(axis=0) >= q)
    else:
        scale = 0.0  # a float output is used as it is
        cand = np.flatnonzero(class_rows.max(axis=0) >= np.float32(threshold))
    return None if cand.size == 0 else (cand, scale)


def _yolo_boxes(
    rows: np.ndarray,
    cand: np.ndarray,
    scale: float,
    zero_point: int,
    box_format: str,
    input_width: int,
    input_height: int,
) -> np.ndarray:
    """The candidates' boxes ``[K, 4]`` as ``x0, y0, x1, y1`` in input pixels."""
    box = dequantize(rows[:4, cand], scale, zero_point).astype(np.float64)
    normalized = box_format == "normalized"
    if box_format == "auto":
        top = rows[:4].max()
        normalized = float(dequantize(np.asarray([top]), scale, zero_point)[0]) <= NORMALIZED_MAX
    cx, cy, bw, bh = box
    if normalized:
        cx, bw = cx * input_width, bw * input_width
        cy, bh = cy * input_height, bh * input_height
    return np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1)
