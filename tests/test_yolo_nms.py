"""The daemon's NMS through OpenCV (``nms_opencv``) against the numpy reference (``nms``)."""

from __future__ import annotations

import numpy as np
import pytest

from edged.postprocess import NMS_CHUNK, nms, nms_opencv


def _candidates(n: int, seed: int, integral: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` boxes, as crowded whatever ``n`` so that NMS has work; scores with many ties."""
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 8 * np.sqrt(n), (n, 2))
    wh = rng.uniform(4, 120, (n, 2))
    if integral:  # exact IoUs, some exactly on the thresholds
        xy, wh = np.round(xy), np.round(wh)
    boxes = np.concatenate([xy, xy + wh], axis=1)
    scores = rng.uniform(0.25, 1.0, n).round(2).astype(np.float32)  # 76 values: ties
    classes = rng.integers(0, 5, n)
    return boxes, scores, classes


@pytest.mark.parametrize("n", [100, 2000, 8400])
@pytest.mark.parametrize("integral", [False, True])
@pytest.mark.parametrize("iou_threshold", [0.45, 0.5, 0.7])
def test_opencv_keeps_the_reference_boxes(n: int, integral: bool, iou_threshold: float) -> None:
    boxes, scores, classes = _candidates(n, seed=n + int(integral), integral=integral)
    want = nms(boxes, scores, classes, iou_threshold, max_keep=n)
    got = nms_opencv(boxes, scores, classes, iou_threshold, max_keep=n)
    assert got.tolist() == want.tolist()
    assert 10 < want.size < n  # suppression happened, and kept some
    assert np.unique(scores[want]).size < want.size  # equal scores among the kept


@pytest.mark.parametrize("cap", [0, 1, 7, 300])
def test_max_keep_caps_after_nms(cap: int) -> None:
    boxes, scores, classes = _candidates(2000, seed=9, integral=False)
    full = nms(boxes, scores, classes, 0.45, max_keep=2000)
    assert nms_opencv(boxes, scores, classes, 0.45, max_keep=cap).tolist() == full[:cap].tolist()
    assert nms(boxes, scores, classes, 0.45, max_keep=cap).tolist() == full[:cap].tolist()


def test_opencv_small_cases() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 10], [20, 20, 30, 30], [2, 0, 12, 10]], float)
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.95])
    classes = np.array([0, 0, 1, 0, 0])
    assert nms_opencv(boxes, scores, classes, 0.45).tolist() == [4, 2, 3]
    assert nms_opencv(boxes, scores, classes, 0.7).tolist() == [4, 0, 1, 2, 3]
    third = np.array([[0, 0, 10, 10], [5, 0, 15, 10]], float)  # IoU exactly 1/3: not above, kept
    assert nms_opencv(third, np.array([0.5, 0.5]), np.zeros(2), 1 / 3).tolist() == [0, 1]
    assert nms_opencv(third, np.array([0.0, 0.0]), np.zeros(2), 0.3).tolist() == [0]  # score 0 is a score
    half = np.array([[0, 0, 10, 10], [0, 0, 10, 5]], float)  # IoU exactly 0.5
    assert nms_opencv(half, np.array([0.9, 0.8]), np.zeros(2), 0.5).tolist() == [0, 1]
    assert nms_opencv(half, np.array([0.9, 0.8]), np.zeros(2), 0.499).tolist() == [0]


def test_heavy_suppression_widens_the_candidates() -> None:
    """Few boxes survive: the first chunk of candidates does not yield max_keep, so more chunks go through."""
    rng = np.random.default_rng(4)
    xy = rng.uniform(0, 60, (8400, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(30, 90, (8400, 2))], axis=1)
    scores = rng.uniform(0.25, 1.0, 8400).round(3).astype(np.float32)
    classes = rng.integers(0, 3, 8400)
    cap = 120
    best = np.argsort(-scores, kind="stable")[:NMS_CHUNK]
    assert nms(boxes[best], scores[best], classes[best], 0.45, NMS_CHUNK).size < cap  # the first chunk falls short
    want = nms(boxes, scores, classes, 0.45, cap)
    assert want.size == cap
    assert nms_opencv(boxes, scores, classes, 0.45, cap).tolist() == want.tolist()
    everything = nms(boxes, scores, classes, 0.45, 8400)
    assert nms_opencv(boxes, scores, classes, 0.45, 8400).tolist() == everything.tolist()
