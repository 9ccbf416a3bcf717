"""Build the split-head and end-to-end YOLO test models of tests/test_yolo_split.py (needs TensorFlow).

    /work/tfvenv/bin/python tests/make_yolo_split_models.py [OUTDIR]   # default: tests/data/yolo

The same 64x96 input, 3 classes and 126 anchors as tests/make_yolo_models.py, and the same
known table (:func:`make_yolo_models.yolo_table`), given in other output layouts:

* ``split``: two outputs, the box rows (centre x, centre y, width, height) as ``[1, 4, 126]``
  or ``[1, 126, 4]``, and the class scores as ``[1, 3, 126]`` or ``[1, 126, 3]``, the way
  Edge TPU exports with the head's boxes and scores apart give them. Quantised, each output
  has its own scale: pixel boxes do not coarsen the scores.
* ``e2e``: one output ``[1, 20, 6]``, an end-to-end export's rows x0, y0, x1, y1, score,
  class (:func:`end2end_table`): the designed anchors that survive NMS, then filler rows
  of low score, best first.
* ``dfl``: Frigate's Edge TPU layout, class-score logits ``[1, 126, 3]`` (or ``[1, 3, 126]``)
  and DFL boxes ``[1, 126, 64]`` (or ``[1, 64, 126]``): for each side (left, top, right,
  bottom) 16 bins whose softmax-weighted bin number is the distance from the anchor point
  in strides (:func:`dfl_tables`); the int8 one adds a third output ``[1, 126, 1]``, the best
  logit of each anchor, as such exports may.
* ``2class``: one head tensor ``[1, 126, 6]`` of 2 classes, whose last side is 6 as an
  end-to-end output's is, and whose 126 rows are the anchor count of the input.

Each output is the table plus zero times the input (GlobalAveragePooling2D, a zero-kernel
Dense layer whose bias is the table, a Reshape), float32 or full-integer int8 / uint8.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
from make_yolo_models import CLASSES, DESIGNED, HEIGHT, STRIDES, WIDTH, _convert, anchor_centres, yolo_table

E2E_ROWS = 20
E2E_KEPT = (0, 7, 2, 6, 3, 4, 5)  # the designed anchors NMS keeps at IoU 0.45 (anchor 1 goes), best first


def end2end_table(normalized: bool) -> np.ndarray:
    """``[20, 6]`` rows x0, y0, x1, y1, score, class: the kept designed anchors, then fillers."""
    rows = []
    for a in E2E_KEPT:
        scores, (cx, cy, w, h) = DESIGNED[a]
        c = int(np.argmax(scores))
        rows.append([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2, scores[c], c])
    rng = np.random.default_rng(5)
    for _ in range(E2E_ROWS - len(rows)):
        x, y = rng.uniform(0, WIDTH - 12), rng.uniform(0, HEIGHT - 12)
        rows.append([x, y, x + 10, y + 10, rng.uniform(0.01, 0.2), int(rng.integers(0, 3))])
    t = np.array(rows, np.float32)
    t = t[np.argsort(-t[:, 4], kind="stable")]
    if normalized:
        t[:, [0, 2]] /= WIDTH
        t[:, [1, 3]] /= HEIGHT
    return t


BINS = 16
FLOOR = -12.0  # the logit of a bin that holds nothing


def anchor_strides() -> np.ndarray:
    """[N] the stride of each anchor, in the head's order."""
    return np.concatenate([np.full(-(-HEIGHT // s) * -(-WIDTH // s), s, np.float32) for s in STRIDES])


def dfl_anchors() -> dict[int, int]:
    """designed anchor -> the DFL anchor that carries its box: the first free one whose point is
    inside the box (a DFL box holds its anchor point)."""
    centres, taken, out = anchor_centres(), set(), {}
    for a, (_, (cx, cy, w, h)) in DESIGNED.items():
        inside = (abs(centres[:, 0] - cx) < w / 2) & (abs(centres[:, 1] - cy) < h / 2)
        out[a] = next(int(i) for i in np.flatnonzero(inside) if int(i) not in taken)
        taken.add(out[a])
    return out


def _bins(distance: float) -> np.ndarray:
    """16 bin logits whose softmax-weighted bin number is ``distance`` (to about 1e-4)."""
    b = np.full(BINS, FLOOR, np.float32)
    f = int(np.floor(distance))
    frac = distance - f
    b[f] = max(np.log(1 - frac), FLOOR) if frac < 1 else FLOOR
    if frac > 0:
        b[f + 1] = max(np.log(frac), FLOOR)
    return b


def dfl_tables() -> tuple[np.ndarray, np.ndarray]:
    """The DFL boxes ``[N, 64]`` and the class logits ``[N, C]`` of the designed objects."""
    centres, strides = anchor_centres(), anchor_strides()
    n = centres.shape[0]
    rng = np.random.default_rng(3)
    probs = rng.uniform(0.0, 0.2, (n, CLASSES))
    boxes = np.tile(np.stack([-3.0, -3.0, 3.0, 3.0]), (n, 1))  # x0, y0, x1, y1 about the point: 6x6
    boxes += np.concatenate([centres, centres], axis=1)
    for a, d in dfl_anchors().items():
        scores, (cx, cy, w, h) = DESIGNED[a]
        probs[d] = scores
        boxes[d] = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
    dist = np.concatenate([centres - boxes[:, :2], boxes[:, 2:] - centres], axis=1) / strides[:, None]
    bins = np.stack([np.concatenate([_bins(float(v)) for v in row]) for row in dist])
    p = np.clip(probs, 0.02, 0.98)
    return bins.astype(np.float32), np.log(p / (1 - p)).astype(np.float32)


def _model(outputs: list[np.ndarray], compact: bool = False):
    """The tables as outputs: a zero-kernel Dense layer whose bias is each table, or (``compact``)
    each table as a constant times 1 + 0 * the input's mean (one weight per value: the DFL
    tables are large)."""
    import tensorflow as tf

    keras = tf.keras
    layers = keras.layers
    keras.utils.set_random_seed(7)
    inp = keras.Input((HEIGHT, WIDTH, 3), batch_size=1)
    pooled = layers.GlobalAveragePooling2D()(inp)
    if compact:
        one = layers.Dense(1, kernel_initializer="zeros", bias_initializer="ones")(pooled)
        one = layers.Reshape((1, 1))(one)
        outs = [layers.Lambda(lambda x, t=tf.constant(t[None]): x * t)(one) for t in outputs]
        return keras.Model(inp, outs)
    outs, denses = [], []
    for table in outputs:
        dense = layers.Dense(table.size, kernel_initializer="zeros")
        outs.append(layers.Reshape(table.shape)(dense(pooled)))
        denses.append(dense)
    model = keras.Model(inp, outs)
    for dense, table in zip(denses, outputs):
        dense.set_weights([np.zeros((3, table.size), np.float32), table.reshape(-1).astype(np.float32)])
    return model


def split_tables(normalized: bool, boxes_cf: bool, scores_cf: bool) -> tuple[np.ndarray, np.ndarray]:
    """The boxes ``[4, N]`` (or ``[N, 4]``) and scores ``[C, N]`` (or ``[N, C]``) of the table."""
    t = yolo_table(normalized)
    return (t[:4] if boxes_cf else t[:4].T), (t[4:] if scores_cf else t[4:].T)


# file name: (I/O type, kind, normalised boxes, boxes channels first, scores channels first)
MODELS = {
    "yolo_split_f32_cl_norm.tflite": ("float32", "split", True, False, False),
    "yolo_split_int8_cf_pixels.tflite": ("int8", "split", False, True, True),
    "yolo_split_uint8_mixed_norm.tflite": ("uint8", "split", True, True, False),
    "yolo_e2e_f32_pixels.tflite": ("float32", "e2e", False, False, False),
    "yolo_e2e_int8_norm.tflite": ("int8", "e2e", True, False, False),
    "yolo_2class_f32_cl_pixels.tflite": ("float32", "2class", False, False, False),
    "yolo_dfl_f32_cl.tflite": ("float32", "dfl", False, False, False),
    "yolo_dfl_int8_cl_3out.tflite": ("int8", "dfl3", False, False, False),
    "yolo_dfl_uint8_cf.tflite": ("uint8", "dfl", False, True, True),
}


def outputs_of(kind: str, normalized: bool, boxes_cf: bool, scores_cf: bool) -> list[np.ndarray]:
    if kind == "split":
        return list(split_tables(normalized, boxes_cf, scores_cf))
    if kind == "e2e":
        return [end2end_table(normalized)]
    if kind in ("dfl", "dfl3"):
        bins, logits = dfl_tables()
        outs = [logits.T if scores_cf else logits, bins.T if boxes_cf else bins]
        return outs + ([logits.max(axis=1, keepdims=True)] if kind == "dfl3" else [])
    return [yolo_table(normalized)[:6].T]  # 2 classes, [N, 4 + 2]


def build(outdir: Path) -> list[Path]:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    outdir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, (io, *layout) in MODELS.items():
        p = outdir / name
        p.write_bytes(_convert(_model(outputs_of(*layout), compact=layout[0].startswith("dfl")), io))
        paths.append(p)
    return paths


def main(argv: list[str]) -> int:
    outdir = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent / "data" / "yolo"
    for p in build(outdir):
        print(f"{p} ({p.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
