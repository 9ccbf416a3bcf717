from __future__ import annotations

import numpy as np

from edged.postprocess import classify, classify_quantized, detect
from edged.preprocess import compute_transform, dequantize


def test_classify_top_k_threshold_and_labels() -> None:
    scores = np.array([0.05, 0.6, 0.2, 0.15], dtype=np.float32)
    out = classify(scores, top_k=3, threshold=0.1, labels={1: "cat", 2: "dog"})
    assert [c.class_id for c in out] == [1, 2, 3]
    assert [c.label for c in out] == ["cat", "dog", "3"]
    assert classify(scores, top_k=2, threshold=0.0)[1].class_id == 2
    assert classify(scores, top_k=0) == []


def test_classify_quantized_equals_dequantise_then_classify() -> None:
    rng = np.random.default_rng(1)
    for dtype, scale, zp in (("uint8", 1 / 256, 0), ("int8", 1 / 256, -128), ("uint8", 0.1, 7)):
        info = np.iinfo(dtype)
        q = rng.integers(info.min, info.max + 1, 1001).astype(dtype)
        a = classify_quantized(q, scale, zp, top_k=5, threshold=0.0)
        b = classify(dequantize(q, scale, zp), top_k=5, threshold=0.0)
        assert [c.score for c in a] == [c.score for c in b]
        assert sorted(c.score for c in a)[::-1] == [c.score for c in a]


def test_detect_maps_boxes_back_through_letterbox_and_clips() -> None:
    t = compute_transform(1280, 720, 300, 300, "letterbox")  # pad_y 65, content 300x169
    # a box covering exactly the content area, and one sticking out of it
    boxes = np.array([[[65 / 300, 0.0, (65 + 169) / 300, 1.0], [0.0, 0.5, 1.0, 1.2], [0, 0, 0.1, 0.1]]], np.float32)
    out = detect(
        boxes,
        np.array([[0, 2, 5]]),
        np.array([[0.9, 0.8, 0.1]]),
        np.array([3.0]),
        t,
        300,
        300,
        threshold=0.5,
        labels={0: "person", 2: "car"},
    )
    assert len(out) == 2
    b0 = out[0].box.to_dict()
    assert abs(b0["xmin"]) < 1 and abs(b0["ymin"]) < 1 and abs(b0["xmax"] - 1280) < 1 and abs(b0["ymax"] - 720) < 3
    assert out[0].label == "person" and out[1].label == "car"
    b1 = out[1].box.to_dict()
    assert b1["ymin"] == 0 and b1["ymax"] == 720 and b1["xmax"] == 1280  # clipped to the frame
    assert abs(b1["xmin"] - 640) < 1


def test_detect_respects_count() -> None:
    t = compute_transform(100, 100, 100, 100)
    boxes = np.tile(np.array([0.1, 0.1, 0.5, 0.5], np.float32), (1, 10, 1))
    out = detect(boxes, np.zeros((1, 10)), np.full((1, 10), 0.9), np.array([2.0]), t, 100, 100)
    assert len(out) == 2
    assert out[0].box.to_dict() == {"xmin": 10.0, "ymin": 10.0, "xmax": 50.0, "ymax": 50.0}
