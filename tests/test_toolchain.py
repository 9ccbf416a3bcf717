"""The model toolchain: ``edged convert``, ``edged eval`` and ``edged bench``.

eval and bench need no TensorFlow and run on the bundled demo model
(models/digits_int8.tflite) with DigitScene renders written into class folders. The
convert tests that need TensorFlow skip without it, unless EDGED_REQUIRE_TF=1 (the CI
stage that installs the ``convert`` extra), where its absence fails them. The error
messages of convert are checked without TensorFlow.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
import pytest
from support import fake_edgetpu

from edged.cli import main
from edged.demo.scene import DigitScene, load_digits
from edged.inference import Engine

pytestmark = pytest.mark.usefixtures("no_tpus_here")  # Edge TPU discovery: bench must not find the host's TPUs

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "models" / "digits_int8.tflite"
DEMO_LABELS = ROOT / "models" / "digits_labels.txt"

# the round trip's limits: int8 within this top-1 accuracy of float32, and this much smaller
INT8_MAX_ACCURACY_LOSS = 0.03
INT8_SIZE_RATIO = (3.5, 4.2)


def require_tf() -> Any:
    if os.environ.get("EDGED_REQUIRE_TF") == "1":
        import tensorflow  # EDGED_REQUIRE_TF=1: a missing TensorFlow fails the test

        return tensorflow
    return pytest.importorskip("tensorflow")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.fixture(scope="module")
def scene_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Held-out digit scenes (640x480 BGR, as the demo's camera delivers), 4 per class in folders 0..9."""
    out = tmp_path_factory.mktemp("scenes")
    scene = DigitScene(seed=4242, hold_frames=7)
    counts = dict.fromkeys(range(10), 0)
    i = 0
    while min(counts.values()) < 4:
        frame, label = scene.render(i)
        i += 7  # a new segment (a new digit) every 7 frames
        if counts[label] >= 4:
            continue
        (out / str(label)).mkdir(exist_ok=True)
        cv2.imwrite(str(out / str(label) / f"{i:05d}.png"), frame)
        counts[label] += 1
    return out


# --------------------------------------------------------------------------- eval


def test_eval_json_on_the_demo_model_matches_the_daemons_engine(
    capsys: pytest.CaptureFixture[str], scene_folder: Path
) -> None:
    rc, out, _ = run(capsys, "eval", DEMO, "--data", scene_folder, "--labels", DEMO_LABELS, "--json")
    assert rc == 0
    doc = json.loads(out)
    assert doc["images"] == 40 and doc["classes"] == [str(i) for i in range(10)]
    (rec,) = doc["models"]
    assert rec["name"] == DEMO.name and rec["size_bytes"] == DEMO.stat().st_size
    assert rec["images"] == 40 and rec["mean_latency_ms"] > 0
    assert rec["top1"] >= 0.9, rec  # the demo model is ~99% right on held-out scenes
    assert rec["top1"] <= rec["top5"] <= 1.0
    assert rec["top1"] == rec["correct_top1"] / 40
    # the daemon's own path, one frame at a time through Engine.process, agrees image by image
    engine = Engine.from_file(DEMO, labels=str(DEMO_LABELS), top_k=1, threshold=0.0)
    hits = 0
    for folder in sorted(scene_folder.iterdir()):
        for f in sorted(folder.iterdir()):
            classes = engine.process(cv2.imread(str(f))).classes
            hits += bool(classes) and classes[0].label == folder.name
    assert rec["correct_top1"] == hits


def test_eval_table_several_models_and_folder_order(capsys: pytest.CaptureFixture[str], scene_folder: Path) -> None:
    int8io = ROOT / "tests" / "data" / "digits_int8io.tflite"
    float32 = ROOT / "tests" / "data" / "digits_float32.tflite"
    rc, out, _ = run(capsys, "eval", DEMO, int8io, float32, "--data", scene_folder, "--std", "255", "--json")
    assert rc == 0
    by_label = json.loads(run(capsys, "eval", DEMO, "--data", scene_folder, "--labels", DEMO_LABELS, "--json")[1])
    recs = json.loads(out)["models"]
    assert [r["name"] for r in recs] == [DEMO.name, int8io.name, float32.name]
    # folders 0..9 in sorted order are ids 0..9: the same answers as matching them to the labels file
    assert recs[0]["correct_top1"] == by_label["models"][0]["correct_top1"]
    assert all(r["top1"] >= 0.9 for r in recs), recs
    rc, text, _ = run(capsys, "eval", DEMO, float32, "--data", scene_folder, "--std", "255")
    assert rc == 0
    lines = text.strip().splitlines()
    assert lines[0] == f"40 images in 10 classes from {scene_folder}"
    assert lines[1].split() == ["model", "size", "top-1", "top-5", "ms/image", "batch"]
    assert set(lines[2].replace(" ", "")) == {"-"}
    rows = {ln.split()[0]: ln.split() for ln in lines[3:]}
    assert set(rows) == {DEMO.name, float32.name}
    assert rows[DEMO.name][3] == f"{100 * recs[0]['top1']:.2f}%"
    assert rows[float32.name][3] == f"{100 * recs[2]['top1']:.2f}%"


def test_eval_errors(capsys: pytest.CaptureFixture[str], scene_folder: Path, tmp_path: Path) -> None:
    rc, _, err = run(capsys, "eval", DEMO, "--data", tmp_path / "nope")
    assert rc == 2 and "image folder not found" in err
    (tmp_path / "flat").mkdir()
    rc, _, err = run(capsys, "eval", DEMO, "--data", tmp_path / "flat")
    assert rc == 2 and "no class folders" in err
    odd = tmp_path / "odd"
    shutil.copytree(scene_folder, odd)
    (odd / "3").rename(odd / "three")
    rc, _, err = run(capsys, "eval", DEMO, "--data", odd, "--labels", DEMO_LABELS)
    assert rc == 2 and "class folders not in the labels file: three" in err
    rc, _, err = run(capsys, "eval", tmp_path / "missing.tflite", "--data", scene_folder)
    assert rc == 2 and "model file not found" in err
    assert len(err.strip().splitlines()) == 1
    broken = tmp_path / "broken"
    shutil.copytree(scene_folder, broken)
    (broken / "3" / "zz.png").write_text("not a png")  # the same fault, the same error as a source's: SourceError
    rc, _, err = run(capsys, "eval", DEMO, "--data", broken)
    assert rc == 1 and f"cannot decode image {broken / '3' / 'zz.png'}: not an image format OpenCV reads" in err
    assert len(err.strip().splitlines()) == 1


# --------------------------------------------------------------------------- bench


def test_bench_json_is_well_formed(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "bench", DEMO, "--threads", "1,2", "--runs", "30", "--warmup", "3", "--json")
    assert rc == 0
    doc = json.loads(out)
    assert {"model", "size_bytes", "input", "warmup", "runs", "threads", "results", "edgetpu"} <= set(doc)
    assert doc["threads"] == [1, 2] and doc["runs"] == 30 and doc["warmup"] == 3
    assert doc["input"] == {"shape": [1, 32, 32, 3], "dtype": "uint8"}
    assert [(r["accelerator"], r["threads"]) for r in doc["results"]] == [("cpu", 1), ("cpu", 2)]
    for r in doc["results"]:
        lat = r["latency_ms"]
        assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
        assert lat["min"] <= lat["mean"] <= lat["max"]
        assert r["throughput_per_s"] > 0
        # 30 back-to-back invokes cannot take less wall time than their own sum
        assert r["throughput_per_s"] <= 1000.0 / lat["mean"] * 1.001
        assert r["first_inference_ms"] == pytest.approx(r["load_ms"] + r["first_invoke_ms"])
    assert doc["edgetpu"]["ran"] is False and doc["edgetpu"]["reason"]


def test_bench_table(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "bench", DEMO, "--threads", "1-2", "--runs", "10", "--warmup", "1")
    assert rc == 0
    lines = out.strip().splitlines()
    assert lines[1] == "1 warm-up invokes, then 10 timed"
    assert lines[2].split()[:6] == ["device", "threads", "first", "ms", "p50", "ms"]
    for ln, threads in zip(lines[4:6], ("1", "2")):
        cells = ln.split()
        assert cells[:2] == ["cpu", threads]
        p50, p90, p99 = (float(c) for c in cells[3:6])
        assert p50 <= p90 <= p99
    assert lines[6] == "Edge TPU: not run (no Edge TPU-compiled model (foo_edgetpu.tflite) given or beside the model)"


def test_bench_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    for argv, message in (
        ((DEMO, "--threads", "0"), "--threads takes thread counts from 1 to 64"),
        ((DEMO, "--threads", "two"), "--threads takes numbers like 1,2 or 1-4"),
        ((tmp_path / "none.tflite",), "model file not found"),
        ((DEMO, "--runs", "0"), "--runs at least 1"),
    ):
        rc, _, err = run(capsys, "bench", *argv)
        assert rc == 2 and message in err, (argv, err)


@pytest.mark.system  # cc, and the Edge TPU worker process
def test_bench_edge_tpu_worker_with_a_stand_in_delegate(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """The Edge TPU run goes through the daemon's worker process: here with the tests' stand-in
    libedgetpu (loads, claims no nodes), so the worker's interpreter runs the plain model."""
    cc = fake_edgetpu.compiler()
    if cc is None:
        if os.environ.get("EDGED_REQUIRE_TOOLS") == "1":
            pytest.fail("a C compiler (cc) is needed to build the stand-in delegate")
        pytest.skip("no C compiler to build the stand-in delegate")
    lib = fake_edgetpu.build(tmp_path, cc=cc)
    argv = ("bench", DEMO, "--threads", "1", "--runs", "20", "--edgetpu", "on", "--edgetpu-library", lib, "--json")
    rc, out, _ = run(capsys, *argv)
    assert rc == 0
    doc = json.loads(out)
    assert doc["edgetpu"]["ran"] is True
    tpu = [r for r in doc["results"] if r["accelerator"] == "edgetpu"]
    assert len(tpu) == 1
    lat = tpu[0]["latency_ms"]
    assert lat["p50"] <= lat["p90"] <= lat["p99"]
    assert tpu[0]["first_inference_ms"] >= tpu[0]["first_invoke_ms"] > 0
    rc, _, err = run(capsys, "bench", DEMO, "--edgetpu", "on", "--edgetpu-library", tmp_path / "none.so")
    assert rc == 1 and "Edge TPU benchmark failed" in err


# --------------------------------------------------------------------------- convert: errors (no TensorFlow needed)


def fake_keras_file(path: Path) -> Path:
    """A zip with a config.json, which is what a .keras file looks like from outside."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("config.json", "{}")
    return path


def test_convert_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "out.tflite"
    rc, _, err = run(capsys, "convert", tmp_path / "missing.keras", "-o", out)
    assert (rc, err.strip()) == (2, f"edged: error: model not found: {tmp_path / 'missing.keras'}")
    text = tmp_path / "notes.h5"
    text.write_text("not a model")
    rc, _, err = run(capsys, "convert", text, "-o", out)
    assert rc == 2 and "is not a Keras model (.keras or .h5) or a SavedModel directory" in err
    rc, _, err = run(capsys, "convert", DEMO, "-o", out)
    assert rc == 2 and "is already a TFLite model" in err
    rc, _, err = run(capsys, "convert", tmp_path, "-o", out)
    assert rc == 2 and "a SavedModel directory holds saved_model.pb" in err
    model = fake_keras_file(tmp_path / "m.keras")
    (tmp_path / "empty").mkdir()
    rc, _, err = run(capsys, "convert", model, "-o", out, "--quantize", "int8", "--data", tmp_path / "empty")
    assert rc == 2 and f"no images in {tmp_path / 'empty'}" in err
    rc, _, err = run(capsys, "convert", model, "-o", out, "--quantize", "int8")
    assert rc == 2 and "--quantize int8 needs --data DIR" in err
    assert not out.exists()


def test_convert_without_tensorflow_names_the_extra(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # import tensorflow -> ImportError
    model = fake_keras_file(tmp_path / "m.keras")
    rc, _, err = run(capsys, "convert", model, "-o", tmp_path / "out.tflite")
    assert rc == 2
    assert (
        err.strip()
        == "edged: error: TensorFlow is not installed: install the convert extra: pip install 'edged[convert]'"
    )


# --------------------------------------------------------------------------- convert -> eval (TensorFlow)

SIDE = 16  # the round trip's digits: 8x8 upscaled to 16x16 grayscale


def digit_pixels(images: np.ndarray) -> np.ndarray:
    """[N,8,8] 0..16 -> [N,16,16] uint8 0..255."""
    up = [
        cv2.resize(im.astype(np.float32) * (255.0 / 16.0), (SIDE, SIDE), interpolation=cv2.INTER_LINEAR)
        for im in images
    ]
    return np.clip(np.rint(np.stack(up)), 0, 255).astype(np.uint8)


def digit_net(keras: Any, first: Sequence[Any] = ()) -> Any:
    """The small digit classifier the toolchain tests train: a 3x3 convolution, a 64-wide dense
    layer, 10 classes; ``first``: layers before the convolution (a Rescaling)."""
    layers = keras.layers
    model = keras.Sequential(
        [
            keras.Input((SIDE, SIDE, 1)),
            *first,
            layers.Conv2D(16, 3, activation="relu"),
            layers.Flatten(),
            layers.Dense(64, activation="relu"),
            layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    return model


def write_folders(root: Path, pixels: np.ndarray, labels: np.ndarray) -> Path:
    for i, (px, y) in enumerate(zip(pixels, labels)):
        (root / str(int(y))).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / str(int(y)) / f"{i:04d}.png"), px)
    return root


@pytest.fixture(scope="module")
def small_model(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A small digit classifier trained here on 300 of the bundled held-out digits (the other 150 test it)."""
    tf = require_tf()
    keras = tf.keras
    images, labels = load_digits()
    pixels = digit_pixels(images)
    root = tmp_path_factory.mktemp("roundtrip")
    train, test = (
        write_folders(root / "train", pixels[:300], labels[:300]),
        write_folders(root / "test", pixels[300:], labels[300:]),
    )
    keras.utils.set_random_seed(0)
    model = digit_net(keras)
    model.fit(pixels[:300, :, :, None] / 255.0, labels[:300], epochs=15, batch_size=32, verbose=0)
    path = root / "digits16.keras"
    model.save(path)
    return {"model": path, "train": train, "test": test, "root": root}


def test_convert_eval_round_trip(capsys: pytest.CaptureFixture[str], small_model: dict[str, Path]) -> None:
    root = small_model["root"]
    paths = {q: root / f"digits16_{q}.tflite" for q in ("float32", "float16", "dynamic", "int8")}
    for q, path in paths.items():
        extra = ["--data", small_model["train"], "--num-images", "100", "--std", "255"] if q == "int8" else []
        rc, out, _ = run(capsys, "convert", small_model["model"], "-o", path, "--quantize", q, *extra)
        assert rc == 0, out
        assert out.startswith(f"wrote {path} (")
        if q == "int8":
            assert re.search(r"input .*: \[1, 16, 16, 1\] uint8, scale 0\.00392\d* zero point 0", out), out
            assert "edgetpu_compiler" in out or "edged inspect" in out or "Edge TPU compatibility" in out
            # the batch is fixed at 1, so the Flatten stays a static RESHAPE: nothing cuts the graph
            assert "cut at" not in out and "Operation not supported" not in out, out
    rc, out, _ = run(capsys, "eval", *paths.values(), "--data", small_model["test"], "--std", "255", "--json")
    assert rc == 0
    recs = {r["name"]: r for r in json.loads(out)["models"]}
    f32, i8 = recs[paths["float32"].name], recs[paths["int8"].name]
    assert f32["images"] == 150 and f32["top1"] >= 0.8, f32
    assert abs(f32["top1"] - i8["top1"]) <= INT8_MAX_ACCURACY_LOSS, (f32, i8)
    ratio = f32["size_bytes"] / i8["size_bytes"]
    assert INT8_SIZE_RATIO[0] <= ratio <= INT8_SIZE_RATIO[1], ratio
    assert 1.8 <= f32["size_bytes"] / recs[paths["float16"].name]["size_bytes"] <= 2.1
    assert abs(recs[paths["dynamic"].name]["top1"] - f32["top1"]) <= INT8_MAX_ACCURACY_LOSS
    assert i8["input"]["dtype"] == "uint8" and f32["input"]["dtype"] == "float32"
    assert all(r["batch"] == 1 for r in recs.values())  # a fixed batch of 1: eval runs one image at a time
    # --dynamic-batch keeps Keras' [-1,H,W,C]: eval batches it, with the same answers as one at a time
    dyn = root / "digits16_int8_dynamic_batch.tflite"
    extra = ("--data", small_model["train"], "--num-images", "100", "--std", "255", "--dynamic-batch")
    assert run(capsys, "convert", small_model["model"], "-o", dyn, "--quantize", "int8", *extra)[0] == 0
    rc, out, _ = run(capsys, "eval", dyn, "--data", small_model["test"], "--batch", "16", "--json")
    batched = json.loads(out)["models"][0]
    assert rc == 0 and batched["batch"] == 16
    rc, out, _ = run(capsys, "eval", dyn, "--data", small_model["test"], "--batch", "1", "--json")
    one = json.loads(out)["models"][0]
    assert one["batch"] == 1 and one["correct_top1"] == batched["correct_top1"]
    assert abs(one["top1"] - i8["top1"]) <= INT8_MAX_ACCURACY_LOSS


def test_convert_int8_io_and_a_file_keras_cannot_read(
    capsys: pytest.CaptureFixture[str], small_model: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "int8io.tflite"
    argv = ("convert", small_model["model"], "-o", out, "--quantize", "int8", "--io-type", "int8")
    rc, text, _ = run(capsys, *argv, "--data", small_model["train"], "--num-images", "20", "--std", "255")
    assert rc == 0
    info = Engine.from_file(out).info
    assert info.input.dtype == "int8" and info.outputs[0].dtype == "int8"
    assert info.input.quantization.zero_point == -128
    rc, _, err = run(capsys, "convert", fake_keras_file(tmp_path / "broken.keras"), "-o", tmp_path / "x.tflite")
    assert rc == 2 and "Keras cannot load it" in err and len(err.strip().splitlines()) == 1


def per_channel_tensors(path: Path) -> int:
    """How many tensors of a .tflite file have more than one quantisation scale."""
    from edged.runtime import get_runtime

    interp = get_runtime("auto").interpreter_class(model_path=str(path))
    return sum(len(t["quantization_parameters"]["scales"]) > 1 for t in interp.get_tensor_details())


def test_convert_savedmodel_h5_and_per_tensor(
    capsys: pytest.CaptureFixture[str], small_model: dict[str, Path], tmp_path: Path
) -> None:
    tf = require_tf()
    model = tf.keras.models.load_model(small_model["model"])
    saved = tmp_path / "saved"
    model.export(str(saved), format="tf_saved_model", verbose=False)
    h5 = tmp_path / "digits16.h5"
    model.save(h5)
    data = ("--data", small_model["train"], "--num-images", "20", "--std", "255")
    outs = {name: tmp_path / f"{name}.tflite" for name in ("saved", "h5", "per_tensor")}
    assert run(capsys, "convert", saved, "-o", outs["saved"], "--quantize", "int8", *data)[0] == 0
    assert run(capsys, "convert", h5, "-o", outs["h5"], "--quantize", "int8", *data)[0] == 0
    assert run(capsys, "convert", h5, "-o", outs["per_tensor"], "--quantize", "int8", "--per-tensor", *data)[0] == 0
    for path in outs.values():
        info = Engine.from_file(path).info
        assert info.input.shape[1:] == (SIDE, SIDE, 1) and info.input.dtype == "uint8"
    # TensorFlow quantises conv / dense weights per output channel unless told otherwise
    assert per_channel_tensors(outs["h5"]) >= 2
    assert per_channel_tensors(outs["per_tensor"]) == 0
    rc, out, _ = run(capsys, "eval", *outs.values(), "--data", small_model["test"], "--json")
    assert rc == 0
    accs = [r["top1"] for r in json.loads(out)["models"]]
    assert min(accs) >= 0.8, accs


@pytest.mark.system  # a python of its own
def test_the_toolchain_loads_only_when_its_command_runs() -> None:
    """Building edged's parser (every command does) imports no tool module; running one imports it."""
    code = (
        "import sys; from edged.cli import _parser; _parser(); "
        "print(sorted(m for m in sys.modules if m.startswith('edged.tools.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['edged.tools.parsers']"
