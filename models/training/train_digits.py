#!/usr/bin/env python3
"""Rebuild edged's embedded demo model: models/digits_int8.tflite.

Float training with Keras, then full-integer post-training quantisation with a
representative dataset (uint8 input and output), as the Edge TPU requires.

Data: scikit-learn's bundled copy of the UCI optical handwritten digits
(8x8, values 0..16).  A fixed stratified split (test_size=0.25,
random_state=0) gives the training digits and the held-out digits; the
held-out ones are written to edged/data/digits_heldout.npz and are the only
digits the demo scene (edged.demo.scene.DigitScene) draws by default.

Training images are DigitScene frames (640x480 BGR, mostly) rendered with the
TRAIN digits, preprocessed exactly like the daemon does:
    cv2.resize(frame_bgr, (32, 32), interpolation=cv2.INTER_LINEAR)  # stretch
    cv2.cvtColor(..., cv2.COLOR_BGR2RGB)
    float32 / 255.0        (the int8 model takes the uint8 pixels directly)

Run from the repository root, in a venv with TensorFlow (see models/README.md):
    .venv-train/bin/python models/training/train_digits.py

With --test-variants DIR the same trained model is also written, for edged's end-to-end
tests, as DIR/digits_int8io.tflite (full-integer PTQ with int8 input and output) and
DIR/digits_float32.tflite (plain float32 conversion); models/digits_int8.tflite is
unchanged by the option (the variants are converted after it is written):
    .venv-train/bin/python models/training/train_digits.py --test-variants tests/data
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import os
import shutil
import sys
import tempfile
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

import cv2  # noqa: E402
import numpy as np  # noqa: E402

SEED = 0
INPUT_SIZE = 32
N_TRAIN = 40000  # training renders
N_VAL = 4000  # validation renders (training digits, unseen scene seeds)
N_TEST = 2000  # held-out renders (held-out digits, unseen scene seeds)
N_REPRESENTATIVE = 300
EPOCHS = 15
BATCH = 128
RENDERS_PER_SCENE = 100
# Mostly the demo's default 640x480; a few other sizes/aspects for robustness.
SCENE_SIZES = [((640, 480), 0.80), ((320, 240), 0.05), ((800, 600), 0.05), ((1280, 720), 0.05), ((480, 480), 0.05)]
LABELS = [str(i) for i in range(10)]


def import_scene():
    """Import edged.demo.scene (repo root on sys.path); fall back to loading the file."""
    sys.path.insert(0, str(REPO))
    try:
        from edged.demo import scene  # type: ignore

        return scene
    except Exception as exc:  # e.g. edged/__init__ importing things not in this venv
        print(f"note: 'import edged.demo.scene' failed ({exc!r}); loading edged/demo/scene.py directly")
        spec = importlib.util.spec_from_file_location("edged_scene", REPO / "edged" / "demo" / "scene.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod


def split_digits():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    images = np.clip(np.rint(d.images), 0, 16).astype(np.uint8)
    labels = d.target.astype(np.int64)
    xtr, xte, ytr, yte = train_test_split(images, labels, test_size=0.25, random_state=0, stratify=labels)
    return (xtr, ytr), (xte, yte)


def write_npz(path: Path, **arrays) -> None:
    """np.savez_compressed equivalent with fixed zip timestamps (byte-reproducible)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, arr in arrays.items():
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            data = io.BytesIO()
            np.lib.format.write_array(data, np.ascontiguousarray(arr), allow_pickle=False)
            zf.writestr(info, data.getvalue())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())


def preprocess(frame_bgr: np.ndarray) -> np.ndarray:
    """Daemon preprocessing up to the uint8 stage: stretch to 32x32, BGR->RGB."""
    small = cv2.resize(frame_bgr, (INPUT_SIZE, INPUT_SIZE), interpolation=cv2.INTER_LINEAR)
    return cv2.cvtColor(small, cv2.COLOR_BGR2RGB)


def render_set(scene_mod, images, labels, n, seed_base, rng):
    """n preprocessed uint8 [n,32,32,3] renders and their labels."""
    sizes = [s for s, _ in SCENE_SIZES]
    probs = np.array([p for _, p in SCENE_SIZES])
    probs = probs / probs.sum()
    xs = np.empty((n, INPUT_SIZE, INPUT_SIZE, 3), np.uint8)
    ys = np.empty((n,), np.int64)
    i, k = 0, 0
    while i < n:
        w, h = sizes[rng.choice(len(sizes), p=probs)]
        sc = scene_mod.DigitScene(
            width=w, height=h, seed=seed_base + k, hold_frames=int(rng.integers(10, 60)), images=images, labels=labels
        )
        k += 1
        buf = np.empty((h, w, 3), np.uint8)
        for idx in rng.integers(0, 1_000_000, size=min(RENDERS_PER_SCENE, n - i)):
            frame, y = sc.render(int(idx), out=buf)
            xs[i] = preprocess(frame)
            ys[i] = y
            i += 1
    return xs, ys


def build_model(tf):
    keras = tf.keras
    layers = keras.layers
    return keras.Sequential(
        [
            keras.Input(shape=(INPUT_SIZE, INPUT_SIZE, 3), name="image"),
            layers.Conv2D(32, 3, activation="relu"),
            layers.MaxPooling2D(),
            layers.Conv2D(32, 3, activation="relu"),
            layers.MaxPooling2D(),
            layers.Flatten(),
            layers.Dropout(0.25),  # training only; no op in the TFLite graph
            layers.Dense(128, activation="relu"),
            layers.Dense(10, activation="softmax"),
        ],
        name="digits",
    )


def tflite_eval(path: Path, x_u8: np.ndarray, y: np.ndarray):
    """Top-1 accuracy with the LiteRT interpreter, one frame per invoke (as the daemon)."""
    try:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType
    except ImportError:
        import tensorflow as tf

        Interpreter, OpResolverType = tf.lite.Interpreter, tf.lite.experimental.OpResolverType
    # Plain builtin kernels (no XNNPACK delegate), so the op list is the model's own.
    it = Interpreter(
        model_path=str(path),
        num_threads=2,
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )
    it.allocate_tensors()
    inp = it.get_input_details()[0]
    out = it.get_output_details()[0]
    correct = 0
    for xi, yi in zip(x_u8, y):
        if inp["dtype"] == np.uint8:
            scale, zp = inp["quantization"]
            if abs(scale - 1 / 255) < 1e-6 and zp == 0:
                t = xi[None]  # raw pixels feed the model unchanged
            else:
                t = np.clip(np.rint(xi / 255.0 / scale + zp), 0, 255).astype(np.uint8)[None]
        elif inp["dtype"] == np.int8:
            scale, zp = inp["quantization"]
            if abs(scale - 1 / 255) < 1e-6 and zp == -128:
                t = (xi.astype(np.int16) - 128).astype(np.int8)[None]  # q = pixel - 128
            else:
                t = np.clip(np.rint(xi / 255.0 / scale + zp), -128, 127).astype(np.int8)[None]
        else:
            t = (xi.astype(np.float32) / 255.0)[None]
        it.set_tensor(inp["index"], t)
        it.invoke()
        correct += int(np.argmax(it.get_tensor(out["index"])[0]) == yi)
    ops = sorted({op["op_name"] for op in it._get_ops_details()})
    tensor_types = sorted({np.dtype(t["dtype"]).name for t in it.get_tensor_details()})
    return correct / len(y), inp, out, ops, tensor_types


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--build-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "edged_digits_build",
        help="where the float32 .tflite and other by-products go (not committed)",
    )
    ap.add_argument("--epochs", type=int, default=EPOCHS)
    ap.add_argument("--train-renders", type=int, default=N_TRAIN)
    ap.add_argument(
        "--test-variants",
        type=Path,
        default=None,
        metavar="DIR",
        help="also write DIR/digits_int8io.tflite (int8 in/out) and DIR/digits_float32.tflite "
        "from the same training run, for the end-to-end tests",
    )
    args = ap.parse_args()

    t_start = time.perf_counter()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.keras.utils.set_random_seed(SEED)
    tf.config.experimental.enable_op_determinism()
    tf.config.threading.set_intra_op_parallelism_threads(2)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    print(f"tensorflow {tf.__version__}, keras {tf.keras.__version__ if hasattr(tf.keras, '__version__') else '?'}")

    scene = import_scene()
    (xtr_d, ytr_d), (xte_d, yte_d) = split_digits()
    npz = REPO / "edged" / "data" / "digits_heldout.npz"
    write_npz(npz, images=xte_d, labels=yte_d)
    print(f"digits: {len(ytr_d)} train / {len(yte_d)} held-out -> {npz.relative_to(REPO)} ({npz.stat().st_size} bytes)")
    labels_txt = REPO / "models" / "digits_labels.txt"
    labels_txt.write_text("\n".join(LABELS) + "\n")

    # ---- renders
    t0 = time.perf_counter()
    rng = np.random.default_rng(SEED)
    x_train, y_train = render_set(scene, xtr_d, ytr_d, args.train_renders, 10_000, rng)
    x_val, y_val = render_set(scene, xtr_d, ytr_d, N_VAL, 500_000, rng)
    x_test, y_test = render_set(scene, xte_d, yte_d, N_TEST, 900_000, rng)
    t_render = time.perf_counter() - t0
    print(
        f"rendered {len(y_train)}+{len(y_val)}+{len(y_test)} frames in {t_render:.1f}s; "
        f"train label counts {np.bincount(y_train, minlength=10).tolist()}"
    )

    # ---- float training
    model = build_model(tf)
    model.summary(print_fn=lambda s, **_: print(s))
    model.compile(
        optimizer=tf.keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    f32 = lambda a: a.astype(np.float32) / 255.0  # noqa: E731
    t0 = time.perf_counter()
    model.fit(
        f32(x_train),
        y_train,
        batch_size=BATCH,
        epochs=args.epochs,
        validation_data=(f32(x_val), y_val),
        shuffle=True,
        verbose=2,
    )
    t_train = time.perf_counter() - t0
    keras_acc = float(np.mean(np.argmax(model.predict(f32(x_test), batch_size=512, verbose=0), 1) == y_test))
    print(f"keras float accuracy on {len(y_test)} held-out renders: {keras_acc:.4f} (fit {t_train:.1f}s)")

    # ---- conversion via a SavedModel with a fixed [1,32,32,3] input (the Edge
    # TPU wants static shapes; Keras 3 models don't go through from_keras_model
    # / from_concrete_functions cleanly: resource variables break calibration).
    args.build_dir.mkdir(parents=True, exist_ok=True)
    saved = args.build_dir / "saved_model"
    model.export(
        str(saved),
        format="tf_saved_model",
        verbose=False,
        input_signature=[tf.TensorSpec([1, INPUT_SIZE, INPUT_SIZE, 3], tf.float32, name="image")],
    )

    conv = tf.lite.TFLiteConverter.from_saved_model(str(saved))
    float_path = args.build_dir / "digits_float32.tflite"
    float_path.write_bytes(conv.convert())

    rep = x_train[np.random.default_rng(SEED + 1).choice(len(x_train), N_REPRESENTATIVE, replace=False)]
    print(f"representative set: {len(rep)} training renders, pixel range {rep.min()}..{rep.max()}")
    if rep.max() < 255 or rep.min() > 0:
        raise SystemExit("representative renders do not span 0..255; input scale would not be 1/255")

    def representative_dataset():
        for r in rep:
            yield [r[None].astype(np.float32) / 255.0]

    conv = tf.lite.TFLiteConverter.from_saved_model(str(saved))
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = representative_dataset
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.uint8
    conv.inference_output_type = tf.uint8
    int8_path = REPO / "models" / "digits_int8.tflite"
    int8_path.write_bytes(conv.convert())

    # ---- evaluation with the LiteRT interpreter
    acc_f, _, _, ops_f, _ = tflite_eval(float_path, x_test, y_test)
    acc_q, inp, out, ops_q, types_q = tflite_eval(int8_path, x_test, y_test)
    i_scale, i_zp = inp["quantization"]
    o_scale, o_zp = out["quantization"]
    ok_input = (
        inp["dtype"] == np.uint8
        and inp["shape"].tolist() == [1, 32, 32, 3]
        and abs(i_scale - 1 / 255) < 1e-7
        and i_zp == 0
    )
    ok_output = out["dtype"] == np.uint8 and out["shape"].tolist() == [1, 10]
    allowed = {"CONV_2D", "MAX_POOL_2D", "RESHAPE", "FULLY_CONNECTED", "SOFTMAX", "QUANTIZE"}
    ok_ops = set(ops_q) <= allowed and "float32" not in types_q

    total = time.perf_counter() - t_start
    print("\n==== summary ====")
    print(f"float32 tflite: {float_path} {float_path.stat().st_size} bytes, ops {ops_f}")
    print(f"int8    tflite: {int8_path.relative_to(REPO)} {int8_path.stat().st_size} bytes, ops {ops_q}")
    print(f"int8 tensor dtypes: {types_q}")
    print(
        f"input : {inp['name']} {np.dtype(inp['dtype']).name} {inp['shape'].tolist()} "
        f"scale={i_scale:.9f} (1/255={1 / 255:.9f}) zero_point={i_zp}"
    )
    print(
        f"output: {out['name']} {np.dtype(out['dtype']).name} {out['shape'].tolist()} "
        f"scale={o_scale:.9f} zero_point={o_zp}"
    )
    print(f"held-out renders: {len(y_test)} ({len(yte_d)} held-out digits)")
    print(f"accuracy keras float : {keras_acc:.4f}")
    print(f"accuracy tflite float: {acc_f:.4f}")
    print(f"accuracy tflite int8 : {acc_q:.4f}")
    print(f"time: render {t_render:.1f}s, fit {t_train:.1f}s, total {total:.1f}s")
    if not (ok_input and ok_output and ok_ops):
        print(f"CHECK FAILED: input_ok={ok_input} output_ok={ok_output} ops_ok={ok_ops}")
        return 1
    if args.test_variants is not None:
        return write_test_variants(tf, args.test_variants, saved, representative_dataset, float_path, x_test, y_test)
    return 0


def write_test_variants(
    tf, out_dir: Path, saved: Path, representative_dataset, float_path: Path, x_test: np.ndarray, y_test: np.ndarray
) -> int:
    """The test models: the same SavedModel as int8-in/out full-integer PTQ, and plain float32.

    Runs after models/digits_int8.tflite is written, with its own converter, so that file
    is the same with or without this option.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    conv = tf.lite.TFLiteConverter.from_saved_model(str(saved))
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = representative_dataset
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    int8io_path = out_dir / "digits_int8io.tflite"
    int8io_path.write_bytes(conv.convert())
    f32_path = out_dir / "digits_float32.tflite"
    shutil.copyfile(float_path, f32_path)  # the plain float32 conversion above (no optimisations)

    acc_io, inp, out, ops_io, types_io = tflite_eval(int8io_path, x_test, y_test)
    acc_f, inp_f, out_f, _, _ = tflite_eval(f32_path, x_test, y_test)
    i_scale, i_zp = inp["quantization"]
    o_scale, o_zp = out["quantization"]
    ok_io = (
        inp["dtype"] == np.int8
        and inp["shape"].tolist() == [1, INPUT_SIZE, INPUT_SIZE, 3]
        and abs(i_scale - 1 / 255) < 1e-7
        and i_zp == -128
        and out["dtype"] == np.int8
        and out["shape"].tolist() == [1, 10]
        and "float32" not in types_io
    )
    ok_f = inp_f["dtype"] == np.float32 and out_f["dtype"] == np.float32
    print("\n==== test variants ====")
    for p in (int8io_path, f32_path):
        print(f"{p} {p.stat().st_size} bytes")
    print(f"int8io ops {ops_io}, tensor dtypes {types_io}")
    print(
        f"int8io input : {inp['name']} {np.dtype(inp['dtype']).name} {inp['shape'].tolist()} "
        f"scale={i_scale:.9f} (1/255={1 / 255:.9f}) zero_point={i_zp}"
    )
    print(
        f"int8io output: {out['name']} {np.dtype(out['dtype']).name} {out['shape'].tolist()} "
        f"scale={o_scale:.9f} zero_point={o_zp}"
    )
    print(f"float32 input : {inp_f['name']} {np.dtype(inp_f['dtype']).name} {inp_f['shape'].tolist()}")
    print(f"float32 output: {out_f['name']} {np.dtype(out_f['dtype']).name} {out_f['shape'].tolist()}")
    print(f"accuracy tflite int8io : {acc_io:.4f}")
    print(f"accuracy tflite float32: {acc_f:.4f}")
    if not (ok_io and ok_f):
        print(f"CHECK FAILED: int8io_ok={ok_io} float32_ok={ok_f}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
