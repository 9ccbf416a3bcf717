#!/usr/bin/env python3
"""Rebuild edged's demo detector: models/digits_detector_int8.tflite.

A small fully-convolutional detector for edged.demo.scene.MultiDigitScene (1 to 4
handwritten digits of different sizes on the demo's background), trained with
Keras, then full-integer post-training quantisation (uint8 input and output).

The graph decodes its own grid, so its one output is already the YOLO layout
edged reads (docs/detectors.md): [1, N, 4 + 10] with N = 10x10 grid cells (stride
16 on a 160x160 input), rows cx, cy, w, h normalised to the input, then ten
per-class sigmoid scores. The decode uses only LOGISTIC, ADD, MUL, CONCATENATION
and RESHAPE (fixed batch 1), which the Edge TPU maps.

Data: the digits split of models/training/train_digits.py (scikit-learn's load_digits,
test_size=0.25, random_state=0): training scenes draw the training digits, the
held-out scenes the held-out digits (edged/data/digits_heldout.npz) with unseen
scene seeds. Frames are 640x480 and preprocessed as the daemon does with
resize "stretch": cv2.resize(frame, (160, 160), INTER_LINEAR), BGR to RGB.

Run from the repository root, in a venv with TensorFlow and edged (see models/README.md):
    .venv-train/bin/python models/training/train_detector.py
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

SEED = 0
SIZE = 160  # model input (square; the 640x480 frame is stretched)
GRID = 10  # SIZE / 16
NC = 10
WH_MAX = 0.5  # box width/height = sigmoid(t) * WH_MAX (normalised)
FRAME = (640, 480)
N_TRAIN = 6000
N_VAL = 500
N_TEST = 1000
SEGMENTS_PER_SEED = 100
HOLD = 30
EPOCHS = 24
BATCH = 32
N_REPRESENTATIVE = 300
DEMO_THRESHOLD = 0.5
OUT_MODEL = REPO / "models" / "digits_detector_int8.tflite"
OUT_LABELS = REPO / "models" / "digits_labels.txt"
ALLOWED_OPS = {"QUANTIZE", "CONV_2D", "MAX_POOL_2D", "LOGISTIC", "ADD", "MUL", "CONCATENATION", "RESHAPE"}


def split_digits():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    images = np.clip(np.rint(d.images), 0, 16).astype(np.uint8)
    labels = d.target.astype(np.int64)
    xtr, xte, ytr, yte = train_test_split(images, labels, test_size=0.25, random_state=0, stratify=labels)
    return (xtr, ytr), (xte, yte)


def preprocess(frame_bgr: np.ndarray) -> np.ndarray:
    small = cv2.resize(frame_bgr, (SIZE, SIZE), interpolation=cv2.INTER_LINEAR)
    return cv2.cvtColor(small, cv2.COLOR_BGR2RGB)


def render_set(images, labels, n: int, seed_base: int):
    """n renders: uint8 [n,SIZE,SIZE,3], training targets [n,GRID*GRID,4+NC+1] and the truths (frame pixels)."""
    from edged.demo.scene import MultiDigitScene

    w, h = FRAME
    xs = np.empty((n, SIZE, SIZE, 3), np.uint8)
    ys = np.zeros((n, GRID * GRID, 4 + NC + 1), np.float32)
    truths = []
    buf = np.empty((h, w, 3), np.uint8)
    i, k = 0, 0
    while i < n:
        sc = MultiDigitScene(width=w, height=h, seed=seed_base + k, hold_frames=HOLD, images=images, labels=labels)
        k += 1
        for seg in range(min(SEGMENTS_PER_SEED, n - i)):
            frame, truth = sc.render(seg * HOLD + (seg * 7) % HOLD, out=buf)
            xs[i] = preprocess(frame)
            for t in truth:
                b = t["box"]
                cx, cy = (b["xmin"] + b["xmax"]) / 2 / w, (b["ymin"] + b["ymax"]) / 2 / h
                bw, bh = (b["xmax"] - b["xmin"]) / w, (b["ymax"] - b["ymin"]) / h
                cell = min(int(cy * GRID), GRID - 1) * GRID + min(int(cx * GRID), GRID - 1)
                ys[i, cell, :4] = (cx, cy, bw, bh)
                ys[i, cell, 4 + int(t["label"])] = 1.0
                ys[i, cell, 4 + NC] = 1.0
            truths.append(truth)
            i += 1
    return xs, ys, truths


def build_model(tf):
    keras = tf.keras
    layers = keras.layers
    inp = keras.Input(shape=(SIZE, SIZE, 3), name="image")
    x = layers.Conv2D(16, 3, strides=2, padding="same", activation="relu")(inp)  # 80
    x = layers.MaxPooling2D()(x)  # 40
    x = layers.Conv2D(32, 3, padding="same", activation="relu")(x)
    x = layers.MaxPooling2D()(x)  # 20
    x = layers.Conv2D(64, 3, padding="same", activation="relu")(x)
    x = layers.MaxPooling2D()(x)  # 10
    x = layers.Conv2D(64, 3, padding="same", activation="relu")(x)
    x = layers.Conv2D(96, 3, padding="same", activation="relu")(x)
    # Three 1x1 heads (no slicing in the graph), each decoded with LOGISTIC/ADD/MUL.
    gy, gx = np.meshgrid(np.arange(GRID, dtype=np.float32), np.arange(GRID, dtype=np.float32), indexing="ij")
    grid = np.stack([gx, gy], -1)[None] / GRID  # [1,G,G,2]: the cell's top-left corner, normalised
    xy = layers.Conv2D(2, 1, activation="sigmoid", name="xy")(x)
    xy = layers.Lambda(lambda t: t * (1.0 / GRID) + tf.constant(grid), name="xy_decode")(xy)
    wh = layers.Conv2D(2, 1, activation="sigmoid", name="wh")(x)
    wh = layers.Lambda(lambda t: t * WH_MAX, name="wh_decode")(wh)
    cls = layers.Conv2D(NC, 1, activation="sigmoid", name="cls", bias_initializer=keras.initializers.Constant(-4.0))(x)
    out = layers.Concatenate(name="decoded")([xy, wh, cls])
    out = layers.Reshape((GRID * GRID, 4 + NC), name="yolo")(out)
    return keras.Model(inp, out, name="digits_detector")


def make_loss(tf):
    def loss(y_true, y_pred):
        mask = y_true[..., 4 + NC]  # [B,N]
        eps = 1e-6
        p = tf.clip_by_value(y_pred[..., 4:], eps, 1 - eps)
        t = y_true[..., 4 : 4 + NC]
        # Focal-style BCE on every cell and class.
        bce = -(t * tf.math.log(p) * 4.0 + (1 - t) * tf.math.log(1 - p))
        mod = tf.where(t > 0.5, (1 - p) ** 2, p**2)
        cls_loss = tf.reduce_sum(bce * mod, axis=[1, 2])
        box = tf.reduce_sum(tf.abs(y_pred[..., :4] - y_true[..., :4]), axis=-1)  # L1, normalised units
        box_loss = tf.reduce_sum(box * mask, axis=1) * 20.0
        return cls_loss + box_loss

    return loss


def iou(a: dict, b: dict) -> float:
    ix = max(0.0, min(a["xmax"], b["xmax"]) - max(a["xmin"], b["xmin"]))
    iy = max(0.0, min(a["ymax"], b["ymax"]) - max(a["ymin"], b["ymin"]))
    inter = ix * iy
    ua = (a["xmax"] - a["xmin"]) * (a["ymax"] - a["ymin"]) + (b["xmax"] - b["xmin"]) * (b["ymax"] - b["ymin"])
    return inter / (ua - inter) if ua > inter else 0.0


def match(objects: list[dict], truth: list[dict], iou_min: float = 0.5) -> list[bool]:
    """Greedy matching by score: each detection is a true positive when it overlaps an
    unmatched truth box of its label at IoU >= iou_min (the VOC rule)."""
    used = [False] * len(truth)
    tp = []
    for o in sorted(objects, key=lambda o: -o["score"]):
        best, bi = iou_min, -1
        for j, t in enumerate(truth):
            if not used[j] and t["label"] == o["label"]:
                v = iou(o["box"], t["box"])
                if v >= best:
                    best, bi = v, j
        if bi >= 0:
            used[bi] = True
        tp.append(bi >= 0)
    return tp


def average_precision(scores: list[float], tps: list[bool], n_truth: int) -> float:
    """VOC all-point interpolated AP."""
    if n_truth == 0:
        return float("nan")
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    tp = np.asarray(tps, np.float64)[order]
    ctp, cfp = np.cumsum(tp), np.cumsum(1 - tp)
    rec = ctp / n_truth
    prec = ctp / np.maximum(ctp + cfp, 1e-9)
    mrec = np.concatenate([[0.0], rec, [1.0]])
    mpre = np.concatenate([[0.0], prec, [0.0]])
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    idx = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1]))


def evaluate(model_path: Path, frames_seed_base: int, images, labels, n: int, threshold: float):
    """Through edged's Engine (as the daemon runs it): mAP@0.5 (score threshold 0.05), and
    precision/recall at ``threshold``."""
    from edged.demo.scene import MultiDigitScene
    from edged.inference import Engine

    eng_map = Engine.from_file(model_path, labels=str(OUT_LABELS), threshold=0.05, top_k=0, threads=2)
    w, h = FRAME
    per_class = {str(c): ([], [], 0) for c in range(NC)}
    tp_at = fp_at = n_truth = 0
    i, k = 0, 0
    while i < n:
        sc = MultiDigitScene(
            width=w, height=h, seed=frames_seed_base + k, hold_frames=HOLD, images=images, labels=labels
        )
        k += 1
        for seg in range(min(SEGMENTS_PER_SEED, n - i)):
            frame, truth = sc.render(seg * HOLD + 11)
            objs = [o.to_dict() for o in eng_map.process(frame).objects or []]  # as in the JSON result
            n_truth += len(truth)
            for c in per_class:
                oc = [o for o in objs if o["label"] == c]
                tc = [t for t in truth if t["label"] == c]
                s, t_, m = per_class[c]
                s.extend(o["score"] for o in sorted(oc, key=lambda o: -o["score"]))
                t_.extend(match(oc, tc))
                per_class[c] = (s, t_, m + len(tc))
            hi = [o for o in objs if o["score"] >= threshold]
            tp = sum(match(hi, truth))
            tp_at += tp
            fp_at += len(hi) - tp
            i += 1
    aps = [average_precision(s, t, m) for s, t, m in per_class.values() if m]
    precision = tp_at / max(tp_at + fp_at, 1)
    recall = tp_at / max(n_truth, 1)
    return float(np.mean(aps)), precision, recall, n_truth


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build-dir", type=Path, default=Path(tempfile.gettempdir()) / "edged_detector_build")
    ap.add_argument("--epochs", type=int, default=EPOCHS)
    ap.add_argument("--train-renders", type=int, default=N_TRAIN)
    args = ap.parse_args()

    t_start = time.perf_counter()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.keras.utils.set_random_seed(SEED)
    tf.config.experimental.enable_op_determinism()
    tf.config.threading.set_intra_op_parallelism_threads(2)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    print(f"tensorflow {tf.__version__}")

    (xtr_d, ytr_d), (xte_d, yte_d) = split_digits()
    OUT_LABELS.write_text("\n".join(str(i) for i in range(NC)) + "\n")

    t0 = time.perf_counter()
    x_train, y_train, _ = render_set(xtr_d, ytr_d, args.train_renders, 10_000)
    x_val, y_val, _ = render_set(xtr_d, ytr_d, N_VAL, 500_000)
    t_render = time.perf_counter() - t0
    print(f"renders: {len(x_train)} train, {len(x_val)} val in {t_render:.1f}s")

    model = build_model(tf)
    model.summary(print_fn=lambda s: print(s) if "params" in s.lower() else None)
    model.compile(optimizer=tf.keras.optimizers.Adam(2e-3), loss=make_loss(tf))

    def ds(x, y, shuffle):
        d = tf.data.Dataset.from_tensor_slices((x, y))
        if shuffle:
            d = d.shuffle(len(x), seed=SEED)
        return d.batch(BATCH).map(lambda a, b: (tf.cast(a, tf.float32) / 255.0, b)).prefetch(2)

    sched = tf.keras.callbacks.LearningRateScheduler(
        lambda e, lr: 2e-3 if e < args.epochs * 0.6 else (6e-4 if e < args.epochs * 0.85 else 2e-4)
    )
    t0 = time.perf_counter()
    model.fit(ds(x_train, y_train, True), validation_data=ds(x_val, y_val, False), epochs=args.epochs, verbose=2,
              callbacks=[sched])  # fmt: skip
    t_train = time.perf_counter() - t0

    args.build_dir.mkdir(parents=True, exist_ok=True)
    saved = args.build_dir / "saved_model"
    model.export(str(saved), input_signature=[tf.TensorSpec([1, SIZE, SIZE, 3], tf.float32, name="image")])

    rep = x_train[np.random.default_rng(SEED).choice(len(x_train), N_REPRESENTATIVE, replace=False)]

    def representative_dataset():
        for r in rep:
            yield [r[None].astype(np.float32) / 255.0]

    conv = tf.lite.TFLiteConverter.from_saved_model(str(saved))
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = representative_dataset
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.uint8
    conv.inference_output_type = tf.uint8
    OUT_MODEL.write_bytes(conv.convert())

    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    # Plain builtin kernels (no XNNPACK delegate), so the op list is the model's own.
    it = Interpreter(
        model_path=str(OUT_MODEL), experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    )
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    ops = sorted({op["op_name"] for op in it._get_ops_details()})
    print(f"{OUT_MODEL.relative_to(REPO)}: {OUT_MODEL.stat().st_size} bytes, ops {ops}")
    print(f"input  {inp['name']} {np.dtype(inp['dtype']).name} {inp['shape'].tolist()} {inp['quantization']}")
    print(f"output {out['name']} {np.dtype(out['dtype']).name} {out['shape'].tolist()} {out['quantization']}")

    t0 = time.perf_counter()
    m, p, r, nt = evaluate(OUT_MODEL, 900_000, xte_d, yte_d, N_TEST, DEMO_THRESHOLD)
    print(
        f"held-out ({N_TEST} scenes, {nt} digits): mAP@0.5 {m:.4f}; at threshold {DEMO_THRESHOLD}: "
        f"precision {p:.4f} recall {r:.4f} ({time.perf_counter() - t0:.1f}s)"
    )
    print(f"time: render {t_render:.1f}s, fit {t_train:.1f}s, total {time.perf_counter() - t_start:.1f}s")
    ok = (
        inp["dtype"] == np.uint8
        and inp["shape"].tolist() == [1, SIZE, SIZE, 3]
        and out["dtype"] == np.uint8
        and out["shape"].tolist() == [1, GRID * GRID, 4 + NC]
        and set(ops) <= ALLOWED_OPS
    )
    if not ok:
        print("CHECK FAILED: input/output/ops not as expected")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
