"""End to end on real models with each input type: uint8, int8 and float32.

The three digit classifiers come from one training run (``models/training/train_digits.py``):
``models/digits_int8.tflite`` (uint8 in/out, the demo model), and the test variants
``tests/data/digits_int8io.tflite`` (int8 in/out) and ``tests/data/digits_float32.tflite``
(float in/out, trained on pixels / 255); see ``tests/data/README.md``. Each one goes
through :class:`edged.inference.Engine` on frames of :class:`edged.demo.scene.DigitScene` that
show the held-out digits, with scene seeds the training never used. Only edged's API is
used here, so the tests run under every runtime edged supports (``EDGED_RUNTIME``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

from edged.demo.scene import DigitScene
from edged.inference import Engine

ROOT = Path(__file__).resolve().parent.parent
UINT8_MODEL = ROOT / "models" / "digits_int8.tflite"
INT8IO_MODEL = ROOT / "tests" / "data" / "digits_int8io.tflite"
FLOAT_MODEL = ROOT / "tests" / "data" / "digits_float32.tflite"

# Training used scene seeds from 10,000 up (train), 500,000 (validation) and 900,000 (test).
SEEDS = range(9001, 9021)
FRAMES_PER_SEED = 15  # 300 frames; hold_frames=1, so every frame is its own digit choice
FRAME_STEP = 37  # spread the frames along the drift path
MIN_ACCURACY = 0.95
MIN_AGREEMENT = 0.97
N_TENSOR_CHECKS = 5  # frames whose input tensor is read back and compared


def _engine(path: Path, **kw: object) -> Engine:
    return Engine.from_file(path, top_k=1, threshold=0.0, **kw)


def _rgb32(frame: np.ndarray) -> np.ndarray:
    """What the model sees before normalisation: stretch to 32x32 (linear), BGR->RGB."""
    return cv2.cvtColor(cv2.resize(frame, (32, 32), interpolation=cv2.INTER_LINEAR), cv2.COLOR_BGR2RGB)


def _input(engine: Engine) -> np.ndarray:
    return np.array(engine.loaded.interpreter.get_tensor(engine.info.input.index))[0]


@dataclass
class Run:
    truth: np.ndarray
    pred: dict[str, np.ndarray]
    inputs: dict[str, list[np.ndarray]]  # input tensor after process(), first N_TENSOR_CHECKS frames
    expected_rgb: list[np.ndarray]  # _rgb32 of those frames
    engines: dict[str, Engine]


@pytest.fixture(scope="module")
def run() -> Run:
    engines = {
        "uint8": _engine(UINT8_MODEL),
        "int8io": _engine(INT8IO_MODEL),
        "float32": _engine(FLOAT_MODEL, mean=0.0, std=255.0),
        "float32_default": _engine(FLOAT_MODEL),  # (p - 127.5) / 127.5: not what it was trained on
    }
    truth: list[int] = []
    pred: dict[str, list[int]] = {k: [] for k in engines}
    inputs: dict[str, list[np.ndarray]] = {k: [] for k in engines}
    expected: list[np.ndarray] = []
    for seed in SEEDS:
        scene = DigitScene(640, 480, seed=seed, hold_frames=1)
        buf = np.empty((480, 640, 3), np.uint8)
        for j in range(FRAMES_PER_SEED):
            frame, label = scene.render(j * FRAME_STEP, out=buf)
            truth.append(label)
            keep = len(truth) <= N_TENSOR_CHECKS
            if keep:
                expected.append(_rgb32(frame))
            for name, engine in engines.items():
                classes = engine.process(frame).classes
                assert classes, f"{name}: no class"
                pred[name].append(classes[0].class_id)
                if keep:
                    inputs[name].append(_input(engine))
    return Run(np.array(truth), {k: np.array(v) for k, v in pred.items()}, inputs, expected, engines)


def test_frames_cover_all_digits(run: Run) -> None:
    assert len(run.truth) == len(SEEDS) * FRAMES_PER_SEED
    assert set(run.truth.tolist()) == set(range(10))


@pytest.mark.parametrize("name", ["uint8", "int8io", "float32"])
def test_accuracy(run: Run, name: str) -> None:
    acc = float(np.mean(run.pred[name] == run.truth))
    print(f"{name}: top-1 accuracy {acc:.4f} on {len(run.truth)} frames")
    assert acc >= MIN_ACCURACY, f"{name}: top-1 accuracy {acc:.4f} < {MIN_ACCURACY}"


def test_models_agree(run: Run) -> None:
    p = run.pred
    agree = float(np.mean((p["uint8"] == p["int8io"]) & (p["uint8"] == p["float32"])))
    assert agree >= MIN_AGREEMENT, f"the three models agree on only {agree:.4f} of frames"


def test_input_tensor_types(run: Run) -> None:
    u8, i8, f32 = (run.engines[k].info.input for k in ("uint8", "int8io", "float32"))
    assert (u8.dtype, u8.quantization.zero_point) == ("uint8", 0)
    assert u8.quantization.scale == pytest.approx(1 / 255, rel=1e-5)
    assert i8.dtype == "int8" and i8.shape == (1, 32, 32, 3)
    assert i8.quantization.zero_point == -128
    assert i8.quantization.scale == pytest.approx(1 / 255, rel=1e-5)
    assert f32.dtype == "float32" and not f32.quantization.quantized
    assert run.engines["int8io"].info.outputs[0].dtype == "int8"
    assert run.engines["float32"].info.outputs[0].dtype == "float32"


def test_uint8_input_is_the_raw_pixels(run: Run) -> None:
    for got, rgb in zip(run.inputs["uint8"], run.expected_rgb):
        assert got.dtype == np.uint8
        np.testing.assert_array_equal(got, rgb)


def test_int8_default_input_is_pixel_minus_128(run: Run) -> None:
    """No mean/std: an int8 model with scale 1/255, zero point -128 gets q = p - 128."""
    for got, rgb in zip(run.inputs["int8io"], run.expected_rgb):
        assert got.dtype == np.int8
        np.testing.assert_array_equal(got, (rgb.astype(np.int16) - 128).astype(np.int8))


def test_float_normalisation_reaches_the_tensor(run: Run) -> None:
    for scaled, default, rgb in zip(run.inputs["float32"], run.inputs["float32_default"], run.expected_rgb):
        assert scaled.dtype == np.float32 and default.dtype == np.float32
        # mean=0, std=255: p / 255 in [0, 1]
        assert scaled.min() >= 0.0 and scaled.max() <= 1.0
        np.testing.assert_allclose(scaled, rgb / 255.0, rtol=0, atol=1e-6)
        # default: (p - 127.5) / 127.5 in [-1, 1]; the dark background is negative
        assert default.min() >= -1.0 and default.max() <= 1.0 and default.min() < 0.0
        np.testing.assert_allclose(default, (rgb - 127.5) / 127.5, rtol=0, atol=1e-6)


def test_float_without_the_training_normalisation_is_worse(run: Run) -> None:
    right = float(np.mean(run.pred["float32"] == run.truth))
    wrong = float(np.mean(run.pred["float32_default"] == run.truth))
    print(f"float32: accuracy {right:.4f} with mean=0/std=255, {wrong:.4f} with the default normalisation")
    assert not np.array_equal(run.pred["float32"], run.pred["float32_default"])
    assert wrong < right
