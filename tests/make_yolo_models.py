"""Build the YOLO-layout test models of tests/test_yolo.py (needs TensorFlow; edged itself does not).

    /work/tfvenv/bin/python tests/make_yolo_models.py [OUTDIR]   # default: tests/data/yolo

Each model has the one output of an Ultralytics YOLO (v8/v11) TFLite export for an input of
64x96 (height x width) and 3 classes: 126 anchors (strides 8, 16 and 32), as ``[1, 7, 126]``
(Ultralytics' layout, "cf") or ``[1, 126, 7]`` ("cl"). The output is a known function of the
input: the table :func:`yolo_table` plus zero times the input (GlobalAveragePooling2D, then a
Dense layer whose kernel is zero and whose bias is the table, then a Reshape). Rows 0..3 of the
table are box centre x, centre y, width, height, in input pixels or normalised to the input;
rows 4..6 are the class scores. The designed anchors (:data:`DESIGNED`) overlap in ways that
exercise the class-aware NMS, the threshold and the clipping; the other anchors have a small
box at their grid cell and low scores.

The files (float32, and full-integer int8 or uint8 input and output) are committed, so the
tests run without TensorFlow. :func:`yolo_table` needs only numpy: the tests import it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

HEIGHT, WIDTH, CLASSES = 64, 96, 3
STRIDES = (8, 16, 32)

# anchor: (class scores, box cx, cy, w, h in input pixels)
DESIGNED: dict[int, tuple[tuple[float, float, float], tuple[float, float, float, float]]] = {
    0: ((0.90, 0.05, 0.05), (30.0, 30.0, 20.0, 20.0)),  # class 0, the best
    1: ((0.80, 0.10, 0.05), (32.0, 31.0, 20.0, 20.0)),  # class 0 over anchor 0 (IoU 0.77): suppressed
    2: ((0.05, 0.70, 0.05), (31.0, 30.0, 20.0, 20.0)),  # class 1 over anchor 0: kept (another class)
    3: ((0.05, 0.05, 0.60), (70.0, 20.0, 16.0, 24.0)),  # class 2 alone
    4: ((0.05, 0.05, 0.55), (85.0, 50.0, 30.0, 30.0)),  # class 2, past the right and bottom edges
    5: ((0.05, 0.30, 0.05), (50.0, 50.0, 10.0, 10.0)),  # below the default threshold 0.5
    6: ((0.65, 0.60, 0.05), (12.0, 50.0, 10.0, 10.0)),  # best class 0 (class 1 second)
    7: ((0.75, 0.05, 0.05), (45.0, 30.0, 20.0, 20.0)),  # class 0 beside anchor 0 (IoU 0.14): kept
}


def anchor_centres(height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """[N, 2] centre x, y in input pixels of each anchor, in Ultralytics' order (stride 8 first)."""
    out = []
    for s in STRIDES:
        ys, xs = np.meshgrid(np.arange(-(-height // s)), np.arange(-(-width // s)), indexing="ij")
        out.append(np.stack([(xs.ravel() + 0.5) * s, (ys.ravel() + 0.5) * s], axis=1))
    return np.concatenate(out).astype(np.float32)


def yolo_table(normalized: bool) -> np.ndarray:
    """The model output as real values, ``[4 + C, N]``."""
    centres = anchor_centres()
    n = centres.shape[0]
    t = np.zeros((4 + CLASSES, n), np.float32)
    t[0], t[1] = centres[:, 0], centres[:, 1]
    t[2], t[3] = 6.0, 6.0
    rng = np.random.default_rng(3)
    t[4:] = rng.uniform(0.0, 0.2, (CLASSES, n))
    for a, (scores, box) in DESIGNED.items():
        t[:4, a] = box
        t[4:, a] = scores
    if normalized:
        t[[0, 2]] /= WIDTH
        t[[1, 3]] /= HEIGHT
    return t


def _model(table: np.ndarray, channels_first: bool):
    import tensorflow as tf

    keras = tf.keras
    layers = keras.layers
    keras.utils.set_random_seed(7)
    out = table if channels_first else table.T
    inp = keras.Input((HEIGHT, WIDTH, 3), batch_size=1)
    x = layers.GlobalAveragePooling2D()(inp)
    dense = layers.Dense(out.size, kernel_initializer="zeros")
    x = dense(x)
    x = layers.Reshape(out.shape)(x)
    model = keras.Model(inp, x)
    dense.set_weights([np.zeros((3, out.size), np.float32), out.reshape(-1).astype(np.float32)])
    return model


def _convert(model, io: str) -> bytes:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if io != "float32":
        rng = np.random.default_rng(0)

        def representative():
            for _ in range(8):
                yield [rng.random((1, HEIGHT, WIDTH, 3), dtype=np.float32)]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8 if io == "int8" else tf.uint8
        converter.inference_output_type = tf.int8 if io == "int8" else tf.uint8
    return converter.convert()


# file name: (input/output type, channels first, normalised boxes)
MODELS = {
    "yolo_f32_cf_pixels.tflite": ("float32", True, False),
    "yolo_f32_cl_norm.tflite": ("float32", False, True),
    "yolo_int8_cf_norm.tflite": ("int8", True, True),
    "yolo_uint8_cl_norm.tflite": ("uint8", False, True),
    "yolo_int8_cl_pixels.tflite": ("int8", False, False),
}


def build(outdir: Path) -> list[Path]:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    outdir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, (io, channels_first, normalized) in MODELS.items():
        p = outdir / name
        p.write_bytes(_convert(_model(yolo_table(normalized), channels_first), io))
        paths.append(p)
    return paths


def main(argv: list[str]) -> int:
    outdir = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent / "data" / "yolo"
    for p in build(outdir):
        print(f"{p} ({p.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
