"""Decoding the YOLO layouts beyond the single head tensor: a split head (boxes as centre and
size, or as DFL bins) and an end-to-end export.

Pure functions over numpy arrays, like :mod:`edged.postprocess`, whose single-tensor decoding
(:func:`~edged.postprocess.detect_yolo_rows`) the split head shares.
"""

from __future__ import annotations

import math

import numpy as np

from .postprocess import (
    DEFAULT_YOLO,
    NORMALIZED_MAX,
    YoloOptions,
    _check_box_format,
    _objects,
    detect_yolo_rows,
    nms_opencv,
    quantized_threshold,
)
from .preprocess import Transform, dequantize
from .result import Object
from .yolo_layout import DFL_BINS


def detect_yolo_split(
    boxes: np.ndarray,
    scores: np.ndarray,
    transform: Transform,
    input_width: int,
    input_height: int,
    *,
    boxes_channels_first: bool,
    scores_channels_first: bool,
    box_quant: tuple[float, int] = (0.0, 0),
    score_quant: tuple[float, int] = (0.0, 0),
    options: YoloOptions = DEFAULT_YOLO,
) -> list[Object]:
    """Objects of a split YOLO head: ``boxes`` ``[1, 4, N]`` (or ``[1, N, 4]``) as centre x,
    centre y, width, height, and ``scores`` ``[1, C, N]`` (or ``[1, N, C]``), each with its own
    ``(scale, zero_point)``; decoded as :func:`~edged.postprocess.detect_yolo` decodes one tensor."""
    b = np.asarray(boxes)
    b = b.reshape(b.shape[-2:])
    s = np.asarray(scores)
    s = s.reshape(s.shape[-2:])
    box_rows = b if boxes_channels_first else b.T
    class_rows = s if scores_channels_first else s.T
    if box_rows.shape[0] != 4 or box_rows.shape[1] != class_rows.shape[1]:
        raise ValueError(f"split YOLO head: boxes {list(b.shape)} and scores {list(s.shape)} do not match")
    return detect_yolo_rows(box_rows, class_rows, transform, input_width, input_height, box_quant, score_quant, options)


def detect_yolo_end2end(
    output: np.ndarray,
    transform: Transform,
    input_width: int,
    input_height: int,
    *,
    scale: float = 0.0,
    zero_point: int = 0,
    options: YoloOptions = DEFAULT_YOLO,
) -> list[Object]:
    """Objects of an end-to-end YOLO export (NMS inside the model): ``[1, N, 6]``, each row
    x0, y0, x1, y1, score, class.

    Boxes are in input pixels or normalised to the input (``options.box_format``; ``auto``
    decides by the largest box value of all N rows, as for a head: an export's rows are its N
    best boxes). No NMS is run again (``options.iou_threshold`` is not used): the rows scoring at
    least the threshold are kept, best first (equal scores in row order), at most
    ``options.cap``; the class is the nearest integer of the class column. For a quantised
    output (``scale`` > 0) the threshold is compared with the raw scores
    (:func:`~edged.postprocess.quantized_threshold`).
    """
    box_format, threshold = options.box_format, options.threshold
    _check_box_format(box_format)
    a = np.asarray(output)
    rows = a.reshape(-1, a.shape[-1])
    if rows.shape[1] != 6 or rows.shape[0] == 0:
        return []
    quantized = scale > 0.0 and rows.dtype in (np.uint8, np.int8)
    if not quantized:
        scale = 0.0
        keep = np.flatnonzero(rows[:, 4] >= np.float32(threshold))
    else:
        q = quantized_threshold(threshold, scale, zero_point, rows.dtype)
        keep = np.zeros(0, np.intp) if q is None else np.flatnonzero(rows[:, 4] >= q)
    if keep.size == 0:
        return []
    real = dequantize(rows[keep], scale, zero_point).astype(np.float64)
    order = np.argsort(-real[:, 4], kind="stable")
    real = real[order[: options.cap]]
    xyxy = real[:, :4].copy()
    normalized = box_format == "normalized"
    if box_format == "auto":  # the largest box value of every row: the export's rows are its top-N boxes
        top = dequantize(np.asarray([rows[:, :4].max()]), scale, zero_point)[0]
        normalized = float(top) <= NORMALIZED_MAX
    if normalized:
        xyxy[:, [0, 2]] *= input_width
        xyxy[:, [1, 3]] *= input_height
    cls = np.rint(real[:, 5]).astype(np.int64)
    return _objects(xyxy, cls, real[:, 4], options.labels, transform)


def anchor_grid(height: int, width: int, strides: tuple[int, ...] = (8, 16, 32)) -> tuple[np.ndarray, np.ndarray]:
    """The anchor points ``[N, 2]`` (x, y in grid cells, cell centres) and strides ``[N]`` of a
    YOLO head for an input of this size, in the head's order: stride 8 first, row by row."""
    points, steps = [], []
    for s in strides:
        ys, xs = np.meshgrid(np.arange(-(-height // s)), np.arange(-(-width // s)), indexing="ij")
        points.append(np.stack([xs.ravel() + 0.5, ys.ravel() + 0.5], axis=1))
        steps.append(np.full(xs.size, s, np.float64))
    return np.concatenate(points), np.concatenate(steps)


def _logit(p: float) -> float:
    if p <= 0.0:
        return -math.inf
    return math.inf if p >= 1.0 else math.log(p / (1.0 - p))


def _dfl_candidates(class_rows: np.ndarray, scale: float, zero_point: int, threshold: float) -> np.ndarray:
    """The anchors whose best logit may reach ``threshold`` once through the sigmoid: a bound a
    little below its logit, so that float rounding cannot drop one (the sigmoid then decides)."""
    bound = _logit(threshold)
    if bound == -math.inf:
        return np.arange(class_rows.shape[1])
    if bound == math.inf:
        return np.zeros(0, np.intp)
    bound -= 1e-4 * max(1.0, abs(bound))
    best = class_rows.max(axis=0)
    if scale > 0.0 and class_rows.dtype in (np.uint8, np.int8):
        q = quantized_threshold(bound, scale, zero_point, class_rows.dtype)
        return np.zeros(0, np.intp) if q is None else np.flatnonzero(best >= q)
    return np.flatnonzero(best >= np.float32(bound))


def detect_yolo_dfl(
    boxes: np.ndarray,
    scores: np.ndarray,
    transform: Transform,
    input_width: int,
    input_height: int,
    *,
    boxes_channels_first: bool,
    scores_channels_first: bool,
    box_quant: tuple[float, int] = (0.0, 0),
    score_quant: tuple[float, int] = (0.0, 0),
    options: YoloOptions = DEFAULT_YOLO,
) -> list[Object]:
    """Objects of a split head with DFL boxes, as Frigate's Edge TPU YOLO exports give them:
    ``boxes`` ``[1, N, 64]`` (or ``[1, 64, N]``), for each side (left, top, right, bottom) 16
    bins whose softmax-weighted bin number is the side's distance from the anchor point in
    strides; ``scores`` ``[1, N, C]`` (or ``[1, C, N]``) are logits, made scores by a sigmoid.
    N must be the anchor count of a stride 8/16/32 head for the input. Each anchor keeps its
    best class; those scoring at least the threshold go through class-aware NMS
    (:func:`~edged.postprocess.nms_opencv`), at most ``options.cap`` (``options.box_format`` is
    not used: DFL boxes are distances in strides)."""
    threshold = options.threshold
    b, s = np.asarray(boxes), np.asarray(scores)
    b, s = b.reshape(b.shape[-2:]), s.reshape(s.shape[-2:])
    bins = b.T if boxes_channels_first else b  # [N, 64]
    class_rows = s if scores_channels_first else s.T  # [C, N]
    points, strides = anchor_grid(input_height, input_width)
    if bins.shape != (points.shape[0], 4 * DFL_BINS) or class_rows.shape[1] != points.shape[0]:
        raise ValueError(
            f"DFL YOLO head: boxes {list(b.shape)} and scores {list(s.shape)} do not fit the "
            f"{points.shape[0]} anchors of a {input_width}x{input_height} input"
        )
    sscale = score_quant[0] if class_rows.dtype in (np.uint8, np.int8) else 0.0
    cand = _dfl_candidates(class_rows, sscale, score_quant[1], threshold)
    if cand.size == 0:
        return []
    sub = class_rows[:, cand]
    cls = sub.argmax(axis=0)
    logits = dequantize(sub[cls, np.arange(cand.size)], sscale, score_quant[1])
    score = (1.0 / (1.0 + np.exp(-logits.astype(np.float64)))).astype(np.float32)
    ok = np.flatnonzero(score >= np.float32(threshold))
    cand, cls, score = cand[ok], cls[ok], score[ok]
    if cand.size == 0:
        return []
    bscale = box_quant[0] if bins.dtype in (np.uint8, np.int8) else 0.0
    dist = dfl_distances(dequantize(bins[cand], bscale, box_quant[1]))
    p, st = points[cand], strides[cand][:, None]
    xyxy = np.concatenate([(p - dist[:, :2]) * st, (p + dist[:, 2:]) * st], axis=1)
    keep = nms_opencv(xyxy, score, cls, options.iou_threshold, options.cap)
    return _objects(xyxy[keep], cls[keep], score[keep], options.labels, transform) if keep.size else []


def dfl_distances(bins: np.ndarray) -> np.ndarray:
    """``[K, 64]`` DFL bins (4 sides x 16) -> ``[K, 4]`` distances in strides: each side's
    softmax over its bins, weighted by the bin numbers 0..15."""
    x = np.asarray(bins, dtype=np.float64).reshape(-1, 4, DFL_BINS)
    e = np.exp(x - x.max(axis=2, keepdims=True))
    return (e / e.sum(axis=2, keepdims=True)) @ np.arange(DFL_BINS, dtype=np.float64)
