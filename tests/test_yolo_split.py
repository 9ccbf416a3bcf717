"""Split-head and end-to-end YOLO layouts: recognised from the output shapes, decoded as a plain reference does.

The models in tests/data/yolo/ are built by tests/make_yolo_split_models.py from the table of
tests/make_yolo_models.py: boxes and scores as two outputs, an end-to-end ``[1, 20, 6]``
output, and a 2-class head ``[1, 126, 6]`` (float32, int8, uint8).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from make_yolo_models import DESIGNED, HEIGHT, WIDTH, anchor_centres
from make_yolo_split_models import E2E_ROWS, MODELS, anchor_strides, dfl_anchors, end2end_table
from test_yolo import _frame, _same, reference_decode

from edged.inference import Engine
from edged.model import (
    Quantization,
    TensorSpec,
    detect_task,
    load_model,
    resolve_yolo_end2end,
    resolve_yolo_output,
    resolve_yolo_split,
)
from edged.postprocess import YoloOptions
from edged.yolo import detect_yolo_end2end, detect_yolo_split

DATA = Path(__file__).resolve().parent / "data" / "yolo"
SPLIT = sorted(n for n, m in MODELS.items() if m[1] == "split")
DFL = sorted(n for n, m in MODELS.items() if m[1].startswith("dfl"))
E2E = sorted(n for n, m in MODELS.items() if m[1] == "e2e")
CASES = [((300, 150), "letterbox", None), ((120, 200), "letterbox", 0.1), ((300, 150), "stretch", 0.3)]


def _real(engine: Engine, index: int) -> np.ndarray:
    """Output ``index`` of the last invoke, dequantised with its own scale and zero point (in
    float32, as TF Lite's own Dequantize does)."""
    assert engine.loaded is not None
    spec = next(t for t in engine.info.outputs if t.index == index)
    raw = engine.loaded.interpreter.get_tensor(index).astype(np.float32)
    q = spec.quantization
    return (raw - np.float32(q.zero_point)) * np.float32(q.scale) if q.scale else raw


def reference_end2end(
    real: np.ndarray, normalized: bool, frame_w: int, frame_h: int, resize: str, threshold: float
) -> list[dict[str, Any]]:
    """Rows at or above the threshold, best first, mapped back to the frame: no NMS."""
    rows = [r for r in real.reshape(-1, 6).tolist() if r[4] >= threshold]
    rows.sort(key=lambda r: -r[4])
    out = []
    for x0, y0, x1, y1, score, cls in rows:
        # as a head's centre box: reference_decode maps it back and clips it
        cx, cy, w, h = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0
        col = np.zeros((7, 1))
        col[:4, 0] = cx, cy, w, h
        col[4 + 0, 0] = score  # one class column: reference_decode keeps it
        e = reference_decode(col[None, :5], 0.0, 0, True, normalized, frame_w, frame_h, WIDTH, HEIGHT, resize, 0.0)
        out.append({**e[0], "id": int(round(cls))})
    return out


# --------------------------------------------------------------------------- the whole engine path


@pytest.mark.parametrize("name", SPLIT)
@pytest.mark.parametrize("frame_size,resize,threshold", CASES)
def test_split_head_matches_reference(
    name: str, frame_size: tuple[int, int], resize: str, threshold: float | None
) -> None:
    io, _, normalized, boxes_cf, scores_cf = MODELS[name]
    engine = Engine.from_file(DATA / name, resize=resize, threshold=threshold, top_k=0)
    split = engine.info.yolo_split
    assert engine.info.task == "detection" and engine.info.yolo_output is None and engine.info.yolo_end2end is None
    assert split is not None
    assert (split.boxes_channels_first, split.scores_channels_first, split.classes, split.anchors) == (
        boxes_cf, scores_cf, 3, 126,
    )  # fmt: skip
    assert {t.dtype for t in engine.info.outputs} == {io}
    w, h = frame_size
    out = engine.process(_frame(w, h))
    boxes, scores = _real(engine, split.boxes)[0], _real(engine, split.scores)[0]
    table = np.concatenate([boxes if boxes_cf else boxes.T, scores if scores_cf else scores.T])  # [4 + C, N]
    expected = reference_decode(
        table[None], 0.0, 0, True, normalized, w, h, WIDTH, HEIGHT, resize, 0.5 if threshold is None else threshold
    )
    assert out.objects is not None and len(out.objects) >= 5
    _same(out.objects, expected)


def reference_dfl_table(bins: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """DFL bins ``[N, 64]`` and logits ``[N, C]`` -> the head table ``[4 + C, N]``: centre x, centre
    y, width, height in input pixels, and sigmoid scores."""
    x = bins.astype(np.float64).reshape(-1, 4, 16)
    p = np.exp(x - x.max(axis=2, keepdims=True))
    dist = (p / p.sum(axis=2, keepdims=True) * np.arange(16)).sum(axis=2)  # [N, 4] l, t, r, b
    stride = anchor_strides()[:, None].astype(np.float64)
    centres = anchor_centres().astype(np.float64)
    x0y0, x1y1 = centres - dist[:, :2] * stride, centres + dist[:, 2:] * stride
    box = np.concatenate([(x0y0 + x1y1) / 2, x1y1 - x0y0], axis=1)
    return np.concatenate([box, 1 / (1 + np.exp(-logits.astype(np.float64)))], axis=1).T


@pytest.mark.parametrize("name", DFL)
@pytest.mark.parametrize("frame_size,resize,threshold", CASES)
def test_dfl_head_matches_reference(
    name: str, frame_size: tuple[int, int], resize: str, threshold: float | None
) -> None:
    io, kind, _, boxes_cf, scores_cf = MODELS[name]
    engine = Engine.from_file(DATA / name, resize=resize, threshold=threshold, top_k=0)
    split = engine.info.yolo_split
    assert split is not None and split.box_encoding == "dfl" and (split.classes, split.anchors) == (3, 126)
    assert (split.boxes_channels_first, split.scores_channels_first) == (boxes_cf, scores_cf)
    assert (split.extra is not None) == (kind == "dfl3") and len(engine.info.outputs) == (3 if kind == "dfl3" else 2)
    assert {t.dtype for t in engine.info.outputs} == {io}
    w, h = frame_size
    out = engine.process(_frame(w, h))
    bins, logits = _real(engine, split.boxes)[0], _real(engine, split.scores)[0]
    table = reference_dfl_table(bins.T if boxes_cf else bins, logits.T if scores_cf else logits)
    t = 0.5 if threshold is None else threshold
    expected = reference_decode(table[None], 0.0, 0, True, False, w, h, WIDTH, HEIGHT, resize, t)
    assert out.objects is not None and len(out.objects) >= 5
    _same(out.objects, expected)


def test_dfl_float_model_gives_the_designed_boxes() -> None:
    objects = Engine.from_file(DATA / "yolo_dfl_f32_cl.tflite", top_k=0).process(_frame(WIDTH, HEIGHT)).objects
    order = [0, 7, 2, 6, 3, 4]  # as the head: anchor 1 suppressed, anchor 5 below 0.5
    assert [o.class_id for o in objects or []] == [int(np.argmax(DESIGNED[a][0])) for a in order]
    assert [o.score for o in objects or []] == pytest.approx([max(DESIGNED[a][0]) for a in order], abs=1e-5)
    for o, a in zip(objects or [], order):
        cx, cy, bw, bh = DESIGNED[a][1]
        want = [max(cx - bw / 2, 0), max(cy - bh / 2, 0), min(cx + bw / 2, WIDTH), min(cy + bh / 2, HEIGHT)]
        assert list(o.box.to_dict().values()) == pytest.approx(want, abs=0.06)
    assert len(set(dfl_anchors().values())) == len(DESIGNED)


def test_split_head_decodes_as_the_single_tensor() -> None:
    """The same table as one tensor and as two: the same objects."""
    frame = _frame(300, 150)
    one = Engine.from_file(DATA / "yolo_f32_cl_norm.tflite", top_k=0, threshold=0.1).process(frame).objects
    two = Engine.from_file(DATA / "yolo_split_f32_cl_norm.tflite", top_k=0, threshold=0.1).process(frame).objects
    assert one and one == two


def test_split_int8_scores_keep_their_own_scale() -> None:
    """Pixel boxes (scale 0.36) beside scores of scale 1/283: the designed scores come out exact to a step."""
    info = load_model(DATA / "yolo_split_int8_cf_pixels.tflite").info
    assert info.yolo_split is not None
    scales = {t.index: t.quantization.scale for t in info.outputs}
    assert scales[info.yolo_split.boxes] > 0.3 and scales[info.yolo_split.scores] < 0.004
    engine = Engine.from_file(DATA / "yolo_split_int8_cf_pixels.tflite", top_k=0)
    objects = engine.process(_frame(WIDTH, HEIGHT)).objects
    assert [round(o.score, 2) for o in objects or []] == [0.9, 0.75, 0.7, 0.65, 0.6, 0.55]


@pytest.mark.parametrize("name", E2E)
@pytest.mark.parametrize("frame_size,resize,threshold", CASES)
def test_end2end_matches_reference(
    name: str, frame_size: tuple[int, int], resize: str, threshold: float | None
) -> None:
    io, _, normalized, _, _ = MODELS[name]
    engine = Engine.from_file(DATA / name, resize=resize, threshold=threshold, top_k=0)
    e2e = engine.info.yolo_end2end
    assert e2e is not None and e2e.detections == E2E_ROWS and engine.info.yolo_output is None
    assert engine.info.outputs[0].dtype == io
    w, h = frame_size
    out = engine.process(_frame(w, h))
    t = 0.5 if threshold is None else threshold
    expected = reference_end2end(_real(engine, e2e.index)[0], normalized, w, h, resize, t)
    assert out.objects is not None and len(out.objects) >= 5
    _same(out.objects, expected)


def test_end2end_runs_no_nms_and_equals_the_head() -> None:
    """The end-to-end rows are the head's NMS result: the same objects; overlapping rows stay."""
    frame = _frame(300, 150)
    for threshold in (0.5, 0.25):
        head = Engine.from_file(DATA / "yolo_f32_cf_pixels.tflite", top_k=0, threshold=threshold).process(frame)
        e2e = Engine.from_file(DATA / "yolo_e2e_f32_pixels.tflite", top_k=0, threshold=threshold).process(frame)
        assert head.objects and head.objects == e2e.objects
    rows = end2end_table(normalized=False)[None]
    rows[0, -1] = rows[0, 0]  # a row on the best one, same class: NMS would drop it
    rows[0, -1, 4] = 0.85
    from edged.preprocess import compute_transform

    ident = compute_transform(WIDTH, HEIGHT, WIDTH, HEIGHT)

    def e2e(**options: Any) -> list:
        return detect_yolo_end2end(rows, ident, WIDTH, HEIGHT, options=YoloOptions(**options))

    objs = e2e(threshold=0.5)
    assert len(objs) == 7 and objs[0].box == objs[1].box and objs[1].score == pytest.approx(0.85)
    assert len(e2e(threshold=0.5, max_detections=3)) == 3
    assert len(e2e(threshold=0.5, top_k=2)) == 2
    assert e2e(threshold=0.95) == []
    with pytest.raises(ValueError):
        e2e(box_format="xyxy")


def test_two_class_head_is_not_end2end() -> None:
    """[1, 126, 6] on a 64x96 input: 126 is the anchor count, so a head of 2 classes."""
    engine = Engine.from_file(DATA / "yolo_2class_f32_cl_pixels.tflite", resize="letterbox", top_k=0)
    head = engine.info.yolo_output
    assert head is not None and engine.info.yolo_end2end is None
    assert (head.channels_first, head.classes, head.anchors) == (False, 2, 126)
    out = engine.process(_frame(300, 150))
    real = _real(engine, head.index)
    expected = reference_decode(real, 0.0, 0, False, False, 300, 150, WIDTH, HEIGHT, "letterbox", 0.5)
    assert out.objects and len(out.objects) >= 4
    _same(out.objects, expected)


# --------------------------------------------------------------------------- layout recognition


def _t(index: int, shape: tuple[int, ...], name: str = "Identity", dtype: str = "int8") -> TensorSpec:
    return TensorSpec(index, name, shape, dtype, Quantization((0.004,), (-128,)))


INPUT = (1, 640, 640, 3)


def test_split_layout_recognition() -> None:
    r = resolve_yolo_split([_t(1, (1, 8400, 80)), _t(2, (1, 8400, 4))], INPUT)
    assert r is not None and (r.boxes, r.scores, r.boxes_channels_first, r.scores_channels_first) == (2, 1, 0, 0)
    assert (r.classes, r.anchors) == (80, 8400)
    r = resolve_yolo_split([_t(1, (1, 4, 8400), dtype="float32"), _t(2, (1, 80, 8400), dtype="float32")], INPUT)
    assert r is not None and (r.boxes, r.boxes_channels_first, r.scores_channels_first) == (1, True, True)
    r = resolve_yolo_split([_t(1, (1, 4, 2100)), _t(2, (1, 2100, 17))], (1, 320, 320, 3))
    assert r is not None and (r.boxes_channels_first, r.scores_channels_first, r.classes) == (True, False, 17)
    # 4 classes: both tensors [1, N, 4]; the names decide, anonymous ones are not understood
    four = [_t(1, (1, 8400, 4), "Identity"), _t(2, (1, 8400, 4), "Identity_1")]
    assert resolve_yolo_split(four, INPUT) is None
    named = [_t(1, (1, 8400, 4), "cls_scores"), _t(2, (1, 8400, 4), "pred_boxes")]
    r = resolve_yolo_split(named, INPUT)
    assert r is not None and (r.boxes, r.scores, r.classes) == (2, 1, 4)
    # anchors that do not match, no side of 4, other ranks and dtypes
    for outs in (
        [_t(1, (1, 8400, 4)), _t(2, (1, 2100, 80))],
        [_t(1, (1, 2100, 64)), _t(2, (1, 2100, 80))],  # DFL boxes need the input's anchor count
        [_t(1, (1, 8400, 5)), _t(2, (1, 8400, 80))],
        [_t(1, (8400, 4)), _t(2, (1, 8400, 80))],
        [_t(1, (1, 8400, 4), dtype="int16"), _t(2, (1, 8400, 80))],
    ):
        assert resolve_yolo_split(outs, INPUT) is None
    assert detect_task([_t(1, (1, 8400, 80)), _t(2, (1, 8400, 4))], [], None) == ("detection", None)
    # a third output [1, N, 1] (a max-score tensor) is read by nothing; any other third one is not understood
    r = resolve_yolo_split([_t(1, (1, 8400, 80)), _t(2, (1, 8400, 4)), _t(3, (1, 8400, 1))], INPUT)
    assert r is not None and (r.boxes, r.scores, r.extra, r.box_encoding) == (2, 1, 3, "xywh")
    assert resolve_yolo_split([_t(1, (1, 8400, 80)), _t(2, (1, 8400, 4)), _t(3, (1, 2100, 1))], INPUT) is None
    with pytest.raises(ValueError):
        detect_task([_t(1, (1, 8400, 80)), _t(2, (1, 8400, 4)), _t(3, (1, 8400, 2))], [], None)


def test_dfl_layout_recognition() -> None:
    """Frigate's Edge TPU layout: DFL boxes [1, N, 64] and logit scores [1, N, C], N the anchor count."""
    inp = (1, 320, 320, 3)
    for third in ([], [_t(3, (1, 2100, 1))]):
        r = resolve_yolo_split([_t(1, (1, 2100, 17)), _t(2, (1, 2100, 64)), *third], inp)
        assert r is not None and (r.boxes, r.scores, r.box_encoding, r.classes) == (2, 1, "dfl", 17)
        assert r.extra == (3 if third else None)
    r = resolve_yolo_split([_t(1, (1, 64, 2100)), _t(2, (1, 80, 2100))], inp)
    assert r is not None and (r.boxes, r.boxes_channels_first, r.box_encoding, r.classes) == (1, True, "dfl", 80)
    # 64 classes beside DFL boxes: both could be either, the names decide
    both = [_t(1, (1, 2100, 64), "Identity"), _t(2, (1, 2100, 64), "Identity_1")]
    assert resolve_yolo_split(both, inp) is None
    named = [_t(1, (1, 2100, 64), "class_logits"), _t(2, (1, 2100, 64), "box_dfl")]
    r = resolve_yolo_split(named, inp)
    assert r is not None and (r.boxes, r.box_encoding) == (2, "dfl")


def test_end2end_against_a_two_class_head() -> None:
    """[1, N, 6]: end-to-end unless N is the input's anchor count; [1, 6, N] is always a head."""
    for shape, inp in (((1, 300, 6), INPUT), ((1, 100, 6), INPUT), ((1, 300, 6), None)):
        e = resolve_yolo_end2end([_t(0, shape)], inp)
        assert e is not None and e.detections == shape[1]
        assert resolve_yolo_output([_t(0, shape)], inp) is None
    for shape in ((1, 8400, 6), (1, 6, 8400), (1, 6, 300)):
        assert resolve_yolo_end2end([_t(0, shape)], INPUT) is None
        head = resolve_yolo_output([_t(0, shape)], INPUT)
        assert head is not None and head.classes == 2
    assert resolve_yolo_end2end([_t(0, (1, 300, 7))], INPUT) is None
    assert resolve_yolo_end2end([_t(0, (1, 300, 6)), _t(1, (1, 300, 6))], INPUT) is None


def test_split_rows_must_match() -> None:
    from edged.preprocess import compute_transform

    ident = compute_transform(WIDTH, HEIGHT, WIDTH, HEIGHT)
    with pytest.raises(ValueError, match="do not match"):
        detect_yolo_split(
            np.zeros((1, 4, 10)), np.zeros((1, 3, 11)), ident, WIDTH, HEIGHT,
            boxes_channels_first=True, scores_channels_first=True,
        )  # fmt: skip


def test_model_info_shows_the_layout() -> None:
    split = load_model(DATA / "yolo_split_uint8_mixed_norm.tflite").info.to_dict()
    assert split["yolo_split"] == {
        "boxes": split["yolo_split"]["boxes"], "scores": split["yolo_split"]["scores"],
        "boxes_channels_first": True, "scores_channels_first": False, "classes": 3, "anchors": 126,
        "box_encoding": "xywh", "extra": None,
    }  # fmt: skip
    assert {split["yolo_split"]["boxes"], split["yolo_split"]["scores"]} == {t["index"] for t in split["outputs"]}
    assert "yolo_output" not in split and "yolo_end2end" not in split
    e2e = load_model(DATA / "yolo_e2e_int8_norm.tflite").info.to_dict()
    assert e2e["yolo_end2end"] == {"index": e2e["outputs"][0]["index"], "detections": E2E_ROWS}


def test_ambiguous_split_is_not_understood() -> None:
    """Two outputs the shapes allow as a split head, but not which is which: load_model's one-line error."""
    four = [_t(1, (1, 8400, 4), "Identity"), _t(2, (1, 8400, 4), "Identity_1")]
    with pytest.raises(ValueError):
        detect_task(four, [], None, INPUT)
    assert detect_task([_t(1, (1, 8400, 4), "scores"), _t(2, (1, 8400, 4), "boxes")], [], None, INPUT)[0] == "detection"


@pytest.mark.system  # edged in a subprocess
def test_inspect_json_shows_the_split() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "edged", "inspect", "--json", str(DATA / "yolo_split_int8_cf_pixels.tflite")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["task"] == "detection"
    assert info["yolo_split"]["boxes_channels_first"] is True and info["yolo_split"]["classes"] == 3


@pytest.mark.parametrize(
    ("model", "shown"),
    [
        ("yolo_split_int8_cf_pixels", "(YOLO, split head: boxes #10, scores #12: 3 classes, 126 anchors)"),
        ("yolo_dfl_int8_cl_3out", "(YOLO, split head: boxes #12, scores #11, DFL boxes, #13 unused: 3 classes"),
        ("yolo_e2e_int8_norm", "(YOLO end-to-end, NMS in the model: #7 [1, 20, 6])"),
        ("yolo_2class_f32_cl_pixels", "(YOLO, one head tensor #7 [1, N, 6]: 2 classes, 126 anchors)"),
    ],
)
def test_inspect_text_names_the_layout(model: str, shown: str, capsys: pytest.CaptureFixture[str]) -> None:
    from edged.cli import main

    assert main(["inspect", str(DATA / f"{model}.tflite")]) == 0
    task = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("task:")]
    assert len(task) == 1 and task[0].startswith("task:     detection ") and shown in task[0], task
