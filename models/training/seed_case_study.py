#!/usr/bin/env python3
"""The seed article's quantisation case study, reproduced with data a package ships.

The seed's network (Conv2D 32 3x3 relu -> Conv2D 32 3x3 relu -> Flatten -> Dense 128 relu
-> Dense 10 softmax, on 32x32x1 inputs) is trained on scikit-learn's bundled handwritten
digits (8x8, 0..16, upscaled to 32x32 grayscale 0..255), with the split of
models/training/train_digits.py (test_size=0.25, random_state=0, stratified: 1,347 training and 450
held-out digits, the held-out ones being edged/data/digits_heldout.npz). It is then
converted with ``edged convert``'s code to float32, float16, dynamic-range and full-integer
int8 (uint8 input/output, per-channel weights, 100 representative training images); then,
with ``edged convert``'s optimisation code (TensorFlow Model Optimization), fine-tuned from
the trained weights with quantisation-aware training, magnitude pruning to 50 % sparsity,
weight clustering to 16 centroids, and all three together, and converted. Every variant is
evaluated by ``edged eval``'s code (edged's preprocessing and interpreter: top-1 and CPU
latency) on the 450 held-out digits, written as PNGs into class folders; its size, gzip size
and zero weights are read from the file, its Edge TPU verdict from ``edged inspect``'s
report. The table goes into docs/quantization.md between the case-study markers.

Run from the repository root, in a venv with the convert extra and scikit-learn:

    pip install -e '.[convert]' scikit-learn
    python models/training/seed_case_study.py            # ~4.5 minutes on 2 cores

The optimised rows need tf_keras and tensorflow-model-optimization (in the convert extra);
without them the script leaves those rows out and says so. Seeds are fixed and TensorFlow
op determinism is on.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

SEED = 0
SIDE = 32
EPOCHS = 5
TUNE_EPOCHS = 2  # fine-tuning epochs of QAT, pruning and clustering (Adam 1e-4, edged convert's defaults)
BATCH = 32
N_REPRESENTATIVE = 100
BEGIN, END = "<!-- case-study:begin -->", "<!-- case-study:end -->"

# The seed article's own figures (SVHN, 32x32 grayscale; its text gives no float16,
# dynamic-range or QAT numbers, although it mentions a table).
SEED_ROWS = [
    ("Keras model, .h5 (raw_tensorflow_model.h5)", 38_711_280, 0.8297777771949768),
    ("TFLite float32 (tflite_model.tflite)", 12_891_912, 0.8297777777777777),
    ("TFLite full-integer int8, uint8 I/O (quant_tflite_model.tflite)", 3_228_128, 0.8264444444444444),
]


def digits_32() -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """(train, test): uint8 [N,32,32] 0..255 and labels; the split of models/training/train_digits.py."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    images = np.clip(np.rint(d.images), 0, 16).astype(np.float32) * (255.0 / 16.0)
    up = np.stack([cv2.resize(im, (SIDE, SIDE), interpolation=cv2.INTER_LINEAR) for im in images])
    up = np.clip(np.rint(up), 0, 255).astype(np.uint8)
    xtr, xte, ytr, yte = train_test_split(up, d.target, test_size=0.25, random_state=0, stratify=d.target)
    return (xtr, ytr.astype(np.int64)), (xte, yte.astype(np.int64))


def write_folders(root: Path, x: np.ndarray, y: np.ndarray) -> Path:
    """One PNG a digit in root/<label>/ (edged eval's layout; grayscale, read back as BGR)."""
    for i, (img, label) in enumerate(zip(x, y)):
        d = root / str(int(label))
        d.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(d / f"{i:04d}.png"), img)
    return root


def seed_network(keras: Any) -> Any:
    """The seed's Sequential model, layer for layer."""
    layers = keras.layers
    return keras.Sequential(
        [
            keras.Input(shape=(SIDE, SIDE, 1)),
            layers.Conv2D(filters=32, kernel_size=3, activation="relu"),
            layers.Conv2D(filters=32, kernel_size=3, activation="relu"),
            layers.Flatten(),
            layers.Dense(128, activation="relu"),
            layers.Dense(10, activation="softmax"),
        ]
    )


def optimised_variants(train_dir: Path) -> tuple[list[tuple[str, str, Any]], str]:
    """The rows fine-tuned by edged convert's optimisation code: (name, quantize, Plan), and what ran."""
    try:
        import tensorflow_model_optimization as tfmot
        import tf_keras
    except Exception as exc:  # ImportError, or tfmot refusing the installed Keras
        return [], f"not run: tensorflow-model-optimization / tf_keras do not import ({type(exc).__name__}: {exc})"
    from edged.tools.optimize import Plan

    def plan(**kw: Any) -> Any:
        return Plan(train=train_dir, epochs=TUNE_EPOCHS, batch_size=BATCH, **kw)

    rows = [
        ("QAT, then int8, uint8 I/O", "int8", plan(qat=True)),
        ("pruned to 50% sparsity, float32", "float32", plan(prune=0.5)),
        ("pruned to 50% sparsity, then int8", "int8", plan(prune=0.5)),
        ("clustered to 16 weights a layer, float32", "float32", plan(clusters=16)),
        ("clustered to 16, then int8", "int8", plan(clusters=16)),
        ("pruned 50% + clustered 16 + QAT, int8", "int8", plan(prune=0.5, clusters=16, qat=True)),
    ]
    how = (
        f"tensorflow-model-optimization {tfmot.__version__} with tf_keras {tf_keras.__version__}, through "
        f"`edged convert --qat / --prune 0.5 / --cluster 16`: {TUNE_EPOCHS} epochs of fine-tuning (Adam 1e-4, "
        f"batch {BATCH}) from the trained float weights on the {{train}} training digits"
    )
    return rows, how


def file_name(quantize: str, plan: Any) -> str:
    parts = ["seed"]
    if plan is not None:
        parts += (
            (["pruned"] if plan.prune else [])
            + (["clustered"] if plan.clusters else [])
            + (["qat"] if plan.qat else [])
        )
    return "_".join(parts + [quantize]) + ".tflite"


def tpu_verdict(report: str | None, quantize: str) -> str:
    if quantize != "int8":
        return "no (not full-integer)"
    verdict = next((ln for ln in (report or "").splitlines() if ln.startswith("verdict:")), "")
    m = re.search(r"all (\d+) of (\d+) operators", verdict)
    return f"all {m.group(1)} ops map" if m else verdict.removeprefix("verdict:").strip() or "?"


def ratio_text(size: int, base: int) -> str:
    r = size / base
    if abs(r - 1.0) < 5e-4:
        return "1.000"
    return f"{r:.3f} ({1 / r:.2f}x smaller)" if r < 1 else f"{r:.3f} ({r:.2f}x larger)"


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    base = next(r for r in rows if r["variant"] == "TFLite float32")
    out = [
        BEGIN,
        "<!-- generated by models/training/seed_case_study.py: edit the script, not this section -->",
        "",
        f"Measured on {meta['when']} ({meta['machine']}; TensorFlow {meta['tensorflow']}, Keras {meta['keras']}, "
        f"edged's interpreter {meta['runtime']}). Training: {meta['train']}. "
        f"Held-out set: {meta['test_images']} digits. QAT, pruning and clustering: {meta['qat']}. "
        "gzip: the file compressed by gzip -9; zero weights: of the convolution and dense weights in the file; "
        "CPU latency: edged's interpreter, one thread, an image at a time, mean over the held-out set.",
        "",
        "| variant | file | size (bytes) | size vs TFLite float32 | gzip (bytes) | gzip vs float32 "
        "| zero weights | top-1 | vs float32 (points) | CPU ms | Edge TPU |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    base_gz = base["gzip_bytes"]
    for r in rows:
        delta = 100 * (r["top1"] - base["top1"])
        size = ratio_text(r["size_bytes"], base["size_bytes"])
        gz = "" if r.get("gzip_bytes") is None else f"{r['gzip_bytes']:,}"
        gz_ratio = "" if r.get("gzip_bytes") is None else ratio_text(r["gzip_bytes"], base_gz)
        zeros = "" if r.get("sparsity") is None else f"{100 * r['sparsity']:.1f}%"
        ms = "" if r.get("mean_latency_ms") is None else f"{r['mean_latency_ms']:.3f}"
        out.append(
            f"| {r['variant']} | `{r['file']}` | {r['size_bytes']:,} | {size} | {gz} | {gz_ratio} | {zeros} "
            f"| {100 * r['top1']:.2f}% | {delta:+.2f} | {ms} | {r.get('tpu', '')} |"
        )
    out += [
        "",
        "The seed's figures (SVHN, 32x32 grayscale, the same network), as its text gives them:",
        "",
        "| variant | size (bytes) | size vs TFLite float32 | accuracy |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, size, acc in SEED_ROWS:
        out.append(f"| {name} | {size:,} | {ratio_text(size, SEED_ROWS[1][1])} | {100 * acc:.2f}% |")
    if meta.get("compat"):
        out += ["", "edged's Edge TPU report on the int8 model (`edged inspect`; no edgetpu_compiler here):", ""]
        out += ["```", *meta["compat"], "```"]
    out += ["", END]
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=REPO / "build" / "seed_case_study", help="models and images")
    ap.add_argument("--doc", type=Path, default=REPO / "docs" / "quantization.md", help="the page to update")
    ap.add_argument("--epochs", type=int, default=EPOCHS)
    ap.add_argument("--no-optimise", action="store_true", help="skip QAT, pruning and clustering")
    args = ap.parse_args()

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    from edged.config import ModelConfig
    from edged.tools.convert import convert, our_report
    from edged.tools.evaluate import evaluate, load_dataset
    from edged.tools.optimize import weight_stats

    keras = tf.keras
    keras.utils.set_random_seed(SEED)
    tf.config.experimental.enable_op_determinism()

    (xtr, ytr), (xte, yte) = digits_32()
    work = args.work
    if work.exists():
        import shutil

        shutil.rmtree(work)
    train_dir = write_folders(work / "train", xtr, ytr)
    test_dir = write_folders(work / "test", xte, yte)
    print(f"digits: {len(xtr)} training, {len(xte)} held-out, written to {work}")

    model = seed_network(keras)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    t0 = time.perf_counter()
    model.fit(xtr[..., None] / 255.0, ytr, epochs=args.epochs, batch_size=BATCH, shuffle=True, verbose=2)
    t_train = time.perf_counter() - t0
    _, keras_acc = model.evaluate(xte[..., None] / 255.0, yte, verbose=0)
    h5 = work / "seed_model.h5"
    model.save(h5)  # with the optimizer's state, as the seed's .h5 (Adam: 3x the weights)
    print(f"keras: test accuracy {keras_acc:.4f}, {h5.stat().st_size:,} bytes, fit {t_train:.1f} s")

    pre = {"std": 255.0}  # trained on pixels / 255: edged's model config would say mean: 0, std: 255
    variants: list[tuple[str, str, Any]] = [
        ("TFLite float32", "float32", None),
        ("TFLite float16", "float16", None),
        ("TFLite dynamic-range", "dynamic", None),
        ("TFLite full-integer int8, uint8 I/O", "int8", None),
    ]
    qat_how = "skipped (--no-optimise)"
    if not args.no_optimise:
        tuned, qat_how = optimised_variants(train_dir)
        qat_how = qat_how.replace("{train}", str(len(xtr)))
        variants += tuned
    print(f"QAT, pruning, clustering: {qat_how}")

    data = load_dataset(test_dir)
    rows: list[dict[str, Any]] = [
        {"variant": "Keras model (.h5, with optimizer state)", "file": h5.name, "size_bytes": h5.stat().st_size,
         "top1": float(keras_acc), "quantize": None},
    ]  # fmt: skip
    int8_path = None
    for name, q, plan in variants:
        out = work / file_name(q, plan)
        t0 = time.perf_counter()
        convert(h5, out, q, data=train_dir, num_images=N_REPRESENTATIVE, plan=plan, **pre)
        took = time.perf_counter() - t0
        rec = evaluate(ModelConfig(path=str(out), mean=0.0, std=255.0, threads=1), data, batch=32)
        st = weight_stats(out)
        rows.append({"variant": name, "file": out.name, "size_bytes": rec["size_bytes"], "top1": rec["top1"],
                     "quantize": q, "mean_latency_ms": rec["mean_latency_ms"], "gzip_bytes": st.gzip_bytes,
                     "sparsity": st.sparsity, "distinct_per_channel": st.distinct_per_channel,
                     "tpu": tpu_verdict(our_report(out) if q == "int8" else None, q),
                     "convert_seconds": round(took, 1)})  # fmt: skip
        if q == "int8" and plan is None:
            int8_path = out
        print(f"{name}: {rec['size_bytes']:,} bytes, gzip {st.gzip_bytes:,}, zeros {st.sparsity:.3f}, "
              f"top-1 {rec['top1']:.4f}, {took:.1f} s")  # fmt: skip

    from edged.runtime import get_runtime

    rt = get_runtime("auto")
    meta = {
        "when": time.strftime("%Y-%m-%d", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "runtime": f"{rt.name} {rt.version}",
        "train": f"{len(xtr)} digits, {args.epochs} epochs, Adam, batch {BATCH}, {t_train:.1f} s",
        "test_images": len(xte),
        "qat": qat_how,
        "compat": (our_report(int8_path) or "").splitlines() if int8_path else None,
    }
    (work / "results.json").write_text(json.dumps({"rows": rows, "meta": meta}, indent=2) + "\n")
    section = markdown(rows, meta)
    doc = args.doc.read_text() if args.doc.exists() else f"# Quantisation\n\n{BEGIN}\n{END}\n"
    if BEGIN not in doc or END not in doc:
        raise SystemExit(f"{args.doc}: no {BEGIN} ... {END} markers to replace")
    head, rest = doc.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    args.doc.write_text(head + section + tail)
    print(section)
    print(f"updated {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
