"""YOLO-layout detectors (Ultralytics v8/v11 TFLite exports): edged's decode against a plain reference.

The models in tests/data/yolo/ are built by tests/make_yolo_models.py: one output [1, 7, 126]
or [1, 126, 7] whose value is a known table (3 classes, 126 anchors on a 64x96 input),
float32, int8 or uint8, boxes in input pixels or normalised.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from make_yolo_models import DESIGNED, HEIGHT, MODELS, WIDTH, yolo_table

from edged.config import ModelConfig
from edged.inference import Engine
from edged.model import Quantization, TensorSpec, detect_task, resolve_yolo_output, yolo_anchor_count
from edged.postprocess import YoloOptions, detect_yolo, nms, quantized_threshold
from edged.preprocess import compute_transform, dequantize
from edged.result import Object

DATA = Path(__file__).resolve().parent / "data" / "yolo"


# --------------------------------------------------------------------------- the reference


def _iou(a: list[float], b: list[float]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def reference_decode(
    raw: np.ndarray,
    scale: float,
    zero_point: int,
    channels_first: bool,
    normalized: bool,
    frame_w: int,
    frame_h: int,
    input_w: int,
    input_h: int,
    resize: str,
    threshold: float,
    iou_threshold: float = 0.45,
    max_det: int = 300,
) -> list[dict[str, Any]]:
    """Dequantise everything, best class per anchor, threshold, greedy per-class NMS, map back."""
    real = raw.astype(np.float64)[0]
    if scale:
        real = (real - zero_point) * scale
    if not channels_first:
        real = real.T
    cands = []
    for a in range(real.shape[1]):
        col = [float(v) for v in real[:, a]]
        scores = col[4:]
        best = max(range(len(scores)), key=lambda k: (scores[k], -k))  # the first of equal scores
        if scores[best] < threshold:
            continue
        cx, cy, w, h = col[:4]
        if normalized:
            cx, w, cy, h = cx * input_w, w * input_w, cy * input_h, h * input_h
        cands.append((scores[best], a, best, [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]))
    cands.sort(key=lambda c: (-c[0], c[1]))
    kept: list[tuple[float, int, int, list[float]]] = []
    for c in cands:
        if len(kept) == max_det:
            break
        if all(k[2] != c[2] or _iou(k[3], c[3]) <= iou_threshold for k in kept):
            kept.append(c)
    if resize == "letterbox":
        s = min(input_w / frame_w, input_h / frame_h)
        nw, nh = round(frame_w * s), round(frame_h * s)
        px, py = (input_w - nw) // 2, (input_h - nh) // 2
        sx, sy = nw / frame_w, nh / frame_h
    else:
        px = py = 0
        sx, sy = input_w / frame_w, input_h / frame_h
    out = []
    for score, _, cls, (x0, y0, x1, y1) in kept:
        box = {
            "xmin": min(max((x0 - px) / sx, 0), frame_w),
            "ymin": min(max((y0 - py) / sy, 0), frame_h),
            "xmax": min(max((x1 - px) / sx, 0), frame_w),
            "ymax": min(max((y1 - py) / sy, 0), frame_h),
        }
        out.append({"id": cls, "score": score, "box": box})
    return out


def _same(found: list[Object], expected: list[dict[str, Any]]) -> None:
    objects = [o.to_dict() for o in found]
    assert [o["id"] for o in objects] == [e["id"] for e in expected]
    for o, e in zip(objects, expected):
        assert o["score"] == pytest.approx(e["score"], abs=1e-4)
        for k in ("xmin", "ymin", "xmax", "ymax"):
            assert abs(o["box"][k] - e["box"][k]) <= 1.0, (k, o, e)


def _frame(w: int, h: int) -> np.ndarray:
    rng = np.random.default_rng(w * h)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


# --------------------------------------------------------------------------- the whole engine path


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize(
    "frame_size,resize,threshold",
    [((300, 150), "letterbox", None), ((120, 200), "letterbox", 0.1), ((300, 150), "stretch", 0.3)],
)
def test_engine_matches_reference(name: str, frame_size: tuple[int, int], resize: str, threshold: float | None) -> None:
    io, channels_first, normalized = MODELS[name]
    engine = Engine.from_file(DATA / name, resize=resize, threshold=threshold, top_k=0)
    info = engine.info
    assert info.task == "detection" and info.ssd_outputs is None
    assert info.yolo_output is not None
    assert (info.yolo_output.channels_first, info.yolo_output.classes, info.yolo_output.anchors) == (
        channels_first,
        3,
        126,
    )
    spec = info.outputs[0]
    assert spec.dtype == io
    w, h = frame_size
    out = engine.process(_frame(w, h))
    assert engine.loaded is not None
    raw = engine.loaded.interpreter.get_tensor(spec.index)  # the last invoke's
    q = spec.quantization
    expected = reference_decode(
        raw, q.scale, q.zero_point, channels_first, normalized, w, h, WIDTH, HEIGHT, resize,
        0.5 if threshold is None else threshold,
    )  # fmt: skip
    assert out.objects is not None and len(out.objects) >= 5
    _same(out.objects, expected)
    assert all(set(o.to_dict()) == {"class_id", "id", "label", "score", "box"} for o in out.objects)


def test_known_objects_of_the_float_model() -> None:
    """The designed anchors on an input-sized frame (the transform is the identity)."""
    engine = Engine.from_file(DATA / "yolo_f32_cf_pixels.tflite", top_k=0)
    objects = engine.process(_frame(WIDTH, HEIGHT)).objects or []
    # anchor 1 is suppressed by anchor 0 (same class), anchor 5 scores below 0.5
    order = [0, 7, 2, 6, 3, 4]
    assert [(o.class_id, o.score) for o in objects] == [
        (int(np.argmax(DESIGNED[a][0])), max(DESIGNED[a][0])) for a in order
    ]
    for o, a in zip(objects, order):
        cx, cy, w, h = DESIGNED[a][1]
        want = [max(cx - w / 2, 0), max(cy - h / 2, 0), min(cx + w / 2, WIDTH), min(cy + h / 2, HEIGHT)]
        assert list(o.box.to_dict().values()) == pytest.approx(want, abs=0.05)
    assert objects[-1].box.xmax == WIDTH and objects[-1].box.ymax == HEIGHT  # clipped


def test_labels_top_k_and_config_keys(tmp_path: Path) -> None:
    path = DATA / "yolo_int8_cf_norm.tflite"
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\nbird\n")
    frame = _frame(WIDTH, HEIGHT)
    objs = Engine.from_file(path, labels=str(labels), top_k=2).process(frame).objects or []
    assert [(o.class_id, o.label) for o in objs] == [(0, "cat"), (0, "cat")]
    # a looser NMS keeps anchor 1 (IoU 0.77 with anchor 0); max_detections caps the result
    loose = Engine.load(ModelConfig(path=str(path), top_k=0, iou_threshold=0.9)).process(frame)
    assert len(loose.objects or []) == 7
    capped = Engine.load(ModelConfig(path=str(path), top_k=0, max_detections=3)).process(frame)
    assert len(capped.objects or []) == 3
    # the box format forced wrong: normalised boxes read as pixels are sub-pixel boxes
    wrong = Engine.load(ModelConfig(path=str(path), top_k=0, yolo_boxes="pixels")).process(frame)
    assert all(o.box.xmax < 2 for o in wrong.objects or [])
    right = Engine.load(ModelConfig(path=str(path), top_k=0, yolo_boxes="normalized")).process(frame)
    auto = Engine.from_file(path, top_k=0).process(frame)
    assert right.objects == auto.objects
    with pytest.raises(ValueError):
        ModelConfig(path="x.tflite", yolo_boxes="xyxy")


@pytest.mark.system  # edged in a subprocess
def test_infer_cli_prints_objects(tmp_path: Path) -> None:
    image = tmp_path / "frame.png"
    cv2.imwrite(str(image), _frame(300, 150))
    proc = subprocess.run(
        [sys.executable, "-m", "edged", "infer", "-m", str(DATA / "yolo_uint8_cl_norm.tflite"), "--resize",
         "letterbox", "-k", "10", str(image)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.splitlines()[0])
    assert result["task"] == "detection" and result["frame"] == {"width": 300, "height": 150}
    objects = result["objects"]
    assert [o["id"] for o in objects] == [0, 0, 1, 0, 2, 2]
    assert objects[0]["box"] == pytest.approx({"xmin": 62.6, "ymin": 37.8, "xmax": 124.6, "ymax": 100.1}, abs=0.5)
    # the NMS options reach the decoder: at IoU 0.9 the same-class overlap (IoU 0.77) is kept too;
    # --max-detections caps the count
    loose = subprocess.run(
        [sys.executable, "-m", "edged", "infer", "-m", str(DATA / "yolo_uint8_cl_norm.tflite"), "--resize",
         "letterbox", "-k", "10", "--iou-threshold", "0.9", str(image)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert loose.returncode == 0, loose.stderr
    assert len(json.loads(loose.stdout.splitlines()[0])["objects"]) == len(objects) + 1
    capped = subprocess.run(
        [sys.executable, "-m", "edged", "infer", "-m", str(DATA / "yolo_uint8_cl_norm.tflite"), "--resize",
         "letterbox", "-k", "10", "--max-detections", "2", str(image)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert [o["id"] for o in json.loads(capped.stdout.splitlines()[0])["objects"]] == [0, 0]


# --------------------------------------------------------------------------- layout recognition


def _t(shape: tuple[int, ...], dtype: str = "int8") -> TensorSpec:
    return TensorSpec(3, "Identity", shape, dtype, Quantization((0.004,), (-128,)))


def test_layout_recognition() -> None:
    inp = (1, 640, 640, 3)
    assert yolo_anchor_count(640, 640) == 8400
    r = resolve_yolo_output([_t((1, 84, 8400))], inp)
    assert r is not None and (r.channels_first, r.classes, r.anchors) == (True, 80, 8400)
    r = resolve_yolo_output([_t((1, 8400, 84), "float32")], inp)
    assert r is not None and (r.channels_first, r.classes, r.anchors) == (False, 80, 8400)
    # the side equal to the anchor count is the anchors, even when it is the shorter one
    r = resolve_yolo_output([_t((1, 126, 200))], (1, 64, 96, 3))
    assert r is not None and (r.channels_first, r.classes, r.anchors) == (False, 196, 126)
    r = resolve_yolo_output([_t((1, 9, 9))], (1, 64, 96, 3))  # square: Ultralytics' layout
    assert r is not None and r.channels_first
    for shape in ((1, 4, 8400), (1, 84, 8400, 1), (2, 84, 8400), (1, 1000)):
        assert resolve_yolo_output([_t(shape)], inp) is None
    assert resolve_yolo_output([_t((1, 84, 8400), "int16")], inp) is None
    assert detect_task([_t((1, 84, 8400))], [], None) == ("detection", None)


# --------------------------------------------------------------------------- NMS


def test_nms_same_class_suppressed_other_classes_kept() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 10], [20, 20, 30, 30], [2, 0, 12, 10]], float)
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.95])
    classes = np.array([0, 0, 1, 0, 0])
    # box 4 (best, class 0) suppresses box 0 (IoU 0.667) and box 1 (IoU 0.681); box 2 is the
    # same box as 0 but of class 1: kept; box 3 overlaps nothing
    assert nms(boxes, scores, classes, 0.45).tolist() == [4, 2, 3]
    assert nms(boxes, scores, classes, 0.675).tolist() == [4, 0, 2, 3]  # box 1 still goes (0.681 with 4)
    assert nms(boxes, scores, classes, 0.7).tolist() == [4, 0, 1, 2, 3]
    assert nms(boxes, scores, np.arange(5), 0.45).tolist() == [4, 0, 1, 2, 3]  # all different classes
    assert nms(boxes, scores, classes, 0.45, max_keep=2).tolist() == [4, 2]


def test_nms_boundary_and_ties() -> None:
    boxes = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [0, 0, 10, 10]], float)  # IoU(0, 1) = 1/3
    assert nms(boxes[:2], np.array([0.5, 0.5]), np.zeros(2), 1 / 3).tolist() == [0, 1]  # not above: kept
    assert nms(boxes[:2], np.array([0.5, 0.5]), np.zeros(2), 0.3).tolist() == [0]
    assert nms(boxes, np.array([0.5, 0.5, 0.5]), np.zeros(3), 0.9).tolist() == [0, 1]  # equal scores: input order
    assert nms(np.zeros((0, 4)), np.zeros(0), np.zeros(0)).tolist() == []


def test_nms_matches_reference_on_many_boxes() -> None:
    rng = np.random.default_rng(5)
    xy = rng.uniform(0, 100, (400, 2))
    wh = rng.uniform(5, 40, (400, 2))
    boxes = np.concatenate([xy, xy + wh], axis=1)
    scores = rng.uniform(0, 1, 400).round(2)  # ties among them
    classes = rng.integers(0, 4, 400)
    order = sorted(range(400), key=lambda i: (-scores[i], i))
    kept: list[int] = []
    for i in order:
        if all(classes[k] != classes[i] or _iou(list(boxes[k]), list(boxes[i])) <= 0.45 for k in kept):
            kept.append(i)
    assert nms(boxes, scores, classes, 0.45, max_keep=1000).tolist() == kept


# --------------------------------------------------------------------------- the quantised pre-filter


@pytest.mark.parametrize("dtype", ["int8", "uint8"])
@pytest.mark.parametrize("scale,zero_point", [(1 / 255, None), (0.0037581699, None), (0.3607843, None), (0.01, 7)])
def test_quantized_threshold_is_exact(dtype: str, scale: float, zero_point: int | None) -> None:
    zp = (-128 if dtype == "int8" else 0) if zero_point is None else zero_point
    info = np.iinfo(dtype)
    raw = np.arange(info.min, info.max + 1).astype(dtype)
    real = dequantize(raw, scale, zp)
    for t in [0.0, 0.1, 0.25, 0.5, 0.5 + 1e-9, 0.72157, 0.9, 1.0, float(real[200]), float(real[-1]) + 1e-6]:
        q = quantized_threshold(t, scale, zp, dtype)
        if q is None:
            assert not np.any(real >= t)
        else:
            assert np.array_equal(raw >= q, real >= t), (t, q)


@pytest.mark.parametrize("channels_first", [True, False])
@pytest.mark.parametrize("dtype,zero_point", [("int8", -128), ("uint8", 0), ("int8", -5)])
def test_quantized_prefilter_equals_filtering_after_dequantising(
    channels_first: bool, dtype: str, zero_point: int
) -> None:
    rng = np.random.default_rng(11)
    info = np.iinfo(dtype)
    scale = 1 / 250
    table = yolo_table(normalized=True)
    q = np.clip(np.round(table / scale) + zero_point, info.min, info.max)
    noise = rng.integers(-40, 60, q[4:].shape)
    q[4:] = np.clip(q[4:] + noise, info.min, info.max)  # more candidates, some on the threshold
    q = q.astype(dtype)
    raw = (q if channels_first else q.T)[None]
    real = dequantize(raw, scale, zero_point)
    transform = compute_transform(300, 150, WIDTH, HEIGHT, "letterbox")
    for threshold in (0.1, 0.3, 0.5, float(dequantize(np.array([zero_point + 100]), scale, zero_point)[0])):
        kw: dict[str, Any] = dict(channels_first=channels_first, options=YoloOptions(threshold=threshold))
        quantised = detect_yolo(raw, transform, WIDTH, HEIGHT, scale=scale, zero_point=zero_point, **kw)
        floats = detect_yolo(real, transform, WIDTH, HEIGHT, **kw)
        assert quantised == floats
        assert len(quantised) > 0
    high = YoloOptions(threshold=1.5)
    assert detect_yolo(raw, transform, WIDTH, HEIGHT, scale=scale, zero_point=zero_point, options=high) == []


def test_box_format_auto_and_errors() -> None:
    transform = compute_transform(WIDTH, HEIGHT, WIDTH, HEIGHT)
    pixels = yolo_table(normalized=False)[None]
    normalised = yolo_table(normalized=True)[None]
    a = detect_yolo(pixels, transform, WIDTH, HEIGHT)
    b = detect_yolo(normalised, transform, WIDTH, HEIGHT)
    c = detect_yolo(normalised, transform, WIDTH, HEIGHT, options=YoloOptions(box_format="normalized"))
    assert a == c
    assert [o.class_id for o in a] == [o.class_id for o in b]
    for o, p in zip(a, b):
        assert list(o.box.to_dict().values()) == pytest.approx(list(p.box.to_dict().values()), abs=0.11)
    with pytest.raises(ValueError):
        detect_yolo(pixels, transform, WIDTH, HEIGHT, options=YoloOptions(box_format="xyxy"))
