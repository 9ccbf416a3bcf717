"""The demo's detector (models/digits_detector_int8.tflite, models/training/train_detector.py) on the
multi-digit synthetic scene, and the running precision/recall accounting of the demo's truth scorer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edged.demo.scene import MultiDigitScene, load_digits
from edged.demo.truth import DetectionTally, match_truth, read_box
from edged.inference import Engine
from edged.model import load_model
from edged.result import Box, Object

ROOT = Path(__file__).resolve().parents[1]
DETECTOR = ROOT / "models" / "digits_detector_int8.tflite"
LABELS = ROOT / "models" / "digits_labels.txt"


def _box(x0: float, y0: float, x1: float, y1: float) -> dict[str, float]:
    return {"xmin": x0, "ymin": y0, "xmax": x1, "ymax": y1}


def _object(label: str, score: float, x0: float, y0: float, x1: float, y1: float) -> Object:
    return Object(int(label), label, score, Box(x0, y0, x1, y1))


def test_multi_digit_scene_truth_is_the_drawn_boxes() -> None:
    scene = MultiDigitScene(width=640, height=480, seed=5, hold_frames=10)
    counts = set()
    for i in range(0, 400, 10):
        frame, truth = scene.render(i)
        assert truth == scene.truth(i + 9) and frame.shape == (480, 640, 3)
        counts.add(len(truth))
        for t in truth:
            b = t["box"]
            assert t["label"] in [str(d) for d in range(10)]
            assert 0 <= b["xmin"] < b["xmax"] <= 640 and 0 <= b["ymin"] < b["ymax"] <= 480
            assert b["xmax"] - b["xmin"] == b["ymax"] - b["ymin"] >= 0.14 * 480 - 1
            assert frame[int(b["ymin"]) : int(b["ymax"]), int(b["xmin"]) : int(b["xmax"])].max() >= 185
        for a in range(len(truth)):
            for c in range(a + 1, len(truth)):
                assert read_box(truth[a]).iou(read_box(truth[c])) == 0.0
    assert counts == {1, 2, 3, 4}
    again = MultiDigitScene(width=640, height=480, seed=5, hold_frames=10)
    assert np.array_equal(again.render(123)[0], scene.render(123)[0])


def test_match_truth_and_running_precision_recall() -> None:
    truth = [{"label": "7", "box": _box(0, 0, 100, 100)}, {"label": "2", "box": _box(200, 200, 260, 260)}]
    right = _object("7", 0.9, 5, 5, 105, 105)  # IoU 0.82
    duplicate = _object("7", 0.6, 0, 0, 95, 100)  # same digit again: a false positive
    wrong_label = _object("1", 0.8, 200, 200, 260, 260)
    loose = _object("2", 0.7, 200, 200, 320, 260)  # IoU 0.5 exactly: counts
    too_loose = _object("2", 0.7, 200, 200, 330, 260)  # IoU 0.46
    assert loose.box.iou(read_box(truth[1])) == pytest.approx(0.5)
    assert match_truth([right], truth) == 1
    assert match_truth([duplicate, right], truth) == 1
    assert match_truth([wrong_label], truth) == 0
    assert match_truth([loose], truth) == 1
    assert match_truth([too_loose], truth) == 0
    assert match_truth([], truth) == 0 and match_truth([right], []) == 0

    tally = DetectionTally()
    assert (tally.precision, tally.recall) == (1.0, 1.0)
    tally.add([right, duplicate, loose], truth)  # 2 of 3 right, 2 of 2 found
    tally.add([wrong_label], truth)  # 0 of 1 right, 0 of 2 found
    tally.add([], [])  # nothing drawn, nothing found
    assert (tally.frames, tally.tp, tally.detections, tally.truths) == (3, 2, 4, 4)
    assert tally.precision == pytest.approx(0.5) and tally.recall == pytest.approx(0.5)


def test_bundled_detector_is_yolo_layout_full_int8() -> None:
    info = load_model(DETECTOR, "auto", 1).info
    assert info.task == "detection" and info.yolo_output is not None
    assert info.input.shape == (1, 160, 160, 3) and info.input.dtype == "uint8"
    assert info.yolo_output.classes == 10 and info.yolo_output.anchors == 100
    assert not info.yolo_output.channels_first


# Measured on these 200 held-out frames (seeds 900000 and 900001, held-out digits, 507 digits) when the
# model was committed: precision 98.4%, recall 94.7% (models/README.md). The bounds leave margin for
# other runtimes' rounding.
MIN_PRECISION = 0.90
MIN_RECALL = 0.88


def test_bundled_detector_finds_the_digits_of_held_out_scenes() -> None:
    engine = Engine.from_file(DETECTOR, labels=str(LABELS), threshold=0.5, top_k=0, threads=2)
    images, labels = load_digits()
    tally = DetectionTally()
    for seed in (900_000, 900_001):
        scene = MultiDigitScene(width=640, height=480, seed=seed, hold_frames=30, images=images, labels=labels)
        for seg in range(100):
            frame, truth = scene.render(seg * 30 + 11)
            tally.add(engine.process(frame).objects or [], truth)
    assert tally.truths > 300
    assert tally.precision >= MIN_PRECISION and tally.recall >= MIN_RECALL, (
        f"precision {tally.precision:.3f} recall {tally.recall:.3f} over {tally.frames} frames"
    )


@pytest.mark.faults
def test_the_embedded_demo_counts_every_digit_it_draws() -> None:
    """Found: detectors kept 3 objects (top_k's default), so the demo drew 4 digits and reported 3,
    and its recall read 86-93 % for that reason alone."""
    from edged.config import default_config

    cfg = default_config().streams[0]
    engine = Engine.load(cfg.model)
    scene = MultiDigitScene(width=cfg.source.width, height=cfg.source.height, seed=cfg.source.seed, hold_frames=30)
    four = [i * 30 + 7 for i in range(200) if len(scene.truth(i * 30 + 7)) == 4][:15]
    assert len(four) >= 5, "the scene draws 4 digits in some segments"
    tally = DetectionTally()
    found = []
    for index in four:
        frame, truth = scene.render(index)
        objects = engine.process(frame).objects or []
        tally.add(objects, truth)
        found.append(len(objects))
    print(f"4-digit frames: objects found {found}, recall {tally.recall:.3f}")
    # (before: never more than 3 a frame, whatever the model found: recall at most 0.75 here)
    assert sum(n >= 4 for n in found) >= len(found) / 2, found
    assert tally.recall >= 0.85, tally.recall
