"""Decoding the YOLO layouts beyond the single head tensor: a split head and an end-to-end export.

Pure functions over numpy arrays, like :mod:`edged.postprocess`, whose single-tensor decoding
(:func:`~edged.postprocess.detect_yolo_rows`) the split head shares.
"""

from __future__ import annotations

import numpy as np

from .postprocess import NORMALIZED_MAX, _check_box_format, _objects, detect_yolo_rows, quantized_threshold
from .preprocess import Transform, dequantize
from .result import Object


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
    **kw: object,
) -> list[Object]:
    """Objects of a split YOLO head: ``boxes`` ``[1, 4, N]`` (or ``[1, N, 4]``) as centre x,
    centre y, width, height, and ``scores`` ``[1, C, N]`` (or ``[1, N, C]``), each with its own
    ``(scale, zero_point)``; decoded as :func:`~edged.postprocess.detect_yolo` decodes one tensor
    (``kw``: its threshold, iou_threshold, max_detections, box_format, labels, top_k)."""
    b = np.asarray(boxes)
    b = b.reshape(b.shape[-2:])
    s = np.asarray(scores)
    s = s.reshape(s.shape[-2:])
    box_rows = b if boxes_channels_first else b.T
    class_rows = s if scores_channels_first else s.T
    if box_rows.shape[0] != 4 or box_rows.shape[1] != class_rows.shape[1]:
        raise ValueError(f"split YOLO head: boxes {list(b.shape)} and scores {list(s.shape)} do not match")
    return detect_yolo_rows(
        box_rows, class_rows, transform, input_width, input_height,
        box_quant=box_quant, score_quant=score_quant, **kw,  # type: ignore[arg-type]
    )  # fmt: skip


def detect_yolo_end2end(
    output: np.ndarray,
    transform: Transform,
    input_width: int,
    input_height: int,
    *,
    scale: float = 0.0,
    zero_point: int = 0,
    threshold: float = 0.5,
    max_detections: int = 300,
    box_format: str = "auto",
    labels: dict[int, str] | None = None,
    top_k: int | None = None,
) -> list[Object]:
    """Objects of an end-to-end YOLO export (NMS inside the model): ``[1, N, 6]``, each row
    x0, y0, x1, y1, score, class.

    Boxes are in input pixels or normalised to the input (``box_format``; ``auto`` decides by
    the largest box value of all N rows, as for a head: an export's rows are its N best boxes).
    No NMS is run again: the rows scoring at least ``threshold`` are kept, best first (equal
    scores in row order), at most ``max_detections`` (and ``top_k``); the class is the nearest
    integer of the class column. For a quantised output (``scale`` > 0) the threshold is
    compared with the raw scores (:func:`~edged.postprocess.quantized_threshold`).
    """
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
    cap = max(0, max_detections if top_k is None else min(top_k, max_detections))
    real = real[order[:cap]]
    xyxy = real[:, :4].copy()
    normalized = box_format == "normalized"
    if box_format == "auto":  # the largest box value of every row: the export's rows are its top-N boxes
        top = dequantize(np.asarray([rows[:, :4].max()]), scale, zero_point)[0]
        normalized = float(top) <= NORMALIZED_MAX
    if normalized:
        xyxy[:, [0, 2]] *= input_width
        xyxy[:, [1, 3]] *= input_height
    cls = np.rint(real[:, 5]).astype(np.int64)
    return _objects(xyxy, cls, real[:, 4], labels, transform)
