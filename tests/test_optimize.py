"""``edged convert --prune / --cluster / --qat``: pruning, weight clustering and QAT (TensorFlow Model
Optimization), on a small digit classifier trained in the test; and :func:`weight_stats`, which reads
what they change in the .tflite file.

The tests that train need TensorFlow, tf_keras and tensorflow-model-optimization (the convert extra);
they skip without them, unless EDGED_REQUIRE_TF=1 (the CI step of the convert extra).
"""

from __future__ import annotations

import gzip
import os
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_toolchain import digit_net, digit_pixels, fake_keras_file, require_tf, run, write_folders

from edged.demo.scene import load_digits
from edged.tools.optimize import weight_stats

REPO = Path(__file__).resolve().parents[1]


def test_optimisation_options_are_checked_before_tensorflow_loads(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    model = fake_keras_file(tmp_path / "m.keras")
    out = tmp_path / "out.tflite"
    cases = [
        (["--prune", "1.5", "--train", tmp_path], "--prune is the sparsity, over 0 and under 1"),
        (["--prune", "0", "--train", tmp_path], "--prune is the sparsity, over 0 and under 1"),
        (["--cluster", "1", "--train", tmp_path], "--cluster must be between 2 and 256 clusters, not 1"),
        (["--qat", "--train", tmp_path], "--qat trains for int8: use it with --quantize int8, not float32"),
        (["--prune", "0.5"], "pruned to 50% sparsity needs --train DIR"),
        (["--cluster", "8", "--train", tmp_path / "none"], f"image folder not found: {tmp_path / 'none'}"),
        (["--prune", "0.5", "--train", tmp_path, "--epochs", "0"], "--epochs and --batch-size must be at least 1"),
    ]
    for extra, message in cases:
        rc, _, err = run(capsys, "convert", model, "-o", out, *extra)
        assert rc == 2 and err.count("\n") == 1 and message in err, (extra, err)
    assert not out.exists()


def test_weight_stats_reads_the_weights_of_a_tflite_file() -> None:
    """Against the interpreter's own view of the same tensors: the filters of its convolutions and
    fully-connected layers, their zeros and distinct values per output channel."""
    from edged.model import load_model

    path = REPO / "models" / "digits_int8.tflite"
    st = weight_stats(path)
    blob = path.read_bytes()
    assert (st.size_bytes, st.gzip_bytes) == (len(blob), len(gzip.compress(blob, 9)))
    interp = load_model(path).interpreter
    weights = zeros = distinct = 0
    for op in interp._get_ops_details():  # the interpreter's (private, long-standing) operator list
        if op["op_name"] not in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            continue
        values = interp.get_tensor(int(op["inputs"][1]))
        weights += values.size
        zeros += int(np.count_nonzero(values == 0))
        distinct = max(distinct, max(len(np.unique(row)) for row in values.reshape(values.shape[0], -1)))
    assert weights > 10_000 and (st.weights, st.zeros, st.distinct_per_channel) == (weights, zeros, distinct)
    assert st.sparsity < 0.05  # a model trained without pruning has few zero weights


# --------------------------------------------------------------------------- with TensorFlow Model Optimization


def require_tfmot() -> Any:
    """(tf_keras, tfmot), imported as convert imports them; a skip without them, a failure with EDGED_REQUIRE_TF=1."""
    from edged.tools.common import MissingTensorFlow
    from edged.tools.optimize import import_tfmot

    require_tf()
    try:
        return import_tfmot()
    except MissingTensorFlow:
        if os.environ.get("EDGED_REQUIRE_TF") == "1":
            raise
        pytest.skip("tf_keras / tensorflow-model-optimization are not installed")


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A digit classifier trained here (Keras 3) on 300 of the bundled digits, the other 150 to evaluate;
    and the same network with a Rescaling layer inside, which QAT cannot quantise."""
    tf = require_tf()
    keras = tf.keras
    require_tfmot()
    images, labels = load_digits()
    pixels = digit_pixels(images)
    root = tmp_path_factory.mktemp("optimise")
    train = write_folders(root / "train", pixels[:300], labels[:300])
    test = write_folders(root / "test", pixels[300:], labels[300:])
    keras.utils.set_random_seed(0)
    paths = {"train": train, "test": test, "root": root}
    for name, first in (("plain", []), ("rescaling", [keras.layers.Rescaling(1 / 255.0)])):
        model = digit_net(keras, first)
        x = pixels[:300, :, :, None].astype(np.float32) / (1.0 if first else 255.0)
        model.fit(x, labels[:300], epochs=15, batch_size=32, verbose=0)
        paths[name] = root / f"{name}.keras"
        model.save(paths[name])
        if name == "plain":  # the same trained network saved by Keras 2 (tf_keras), as an .h5
            paths["keras2"] = keras2_copy(model, root / "keras2.h5")
    return paths


def keras2_copy(model: Any, path: Path) -> Path:
    import tf_keras

    legacy = digit_net(tf_keras)  # the same network in Keras 2
    legacy.set_weights(model.get_weights())
    legacy.save(path)
    return path


def report(out: str) -> dict[str, list[str]]:
    """The before/after rows of convert's optimisation table, by their first cell."""
    rows = [ln.split() for ln in out.splitlines() if re.match(r"\s+(before|after)\s", ln)]
    return {r[0]: r for r in rows}


def convert(
    capsys: pytest.CaptureFixture[str], digits: dict[str, Path], name: str, *extra: Any, source: str = "plain"
) -> tuple[Path, str]:
    out = digits["root"] / f"{name}.tflite"
    rc, text, err = run(
        capsys, "convert", digits[source], "-o", out, "--std", "255", "--train", digits["train"],
        "--eval", digits["test"], "--epochs", "3", "--learning-rate", "5e-4", *extra,
    )  # fmt: skip
    assert rc == 0, err
    return out, text


def top1(row: list[str]) -> float:
    return float(row[-1].rstrip("%")) / 100


def test_pruning_zeros_half_the_weights_and_the_file_compresses(
    capsys: pytest.CaptureFixture[str], digits: dict[str, Path]
) -> None:
    require_tfmot()
    out, text = convert(capsys, digits, "pruned", "--quantize", "int8", "--prune", "0.5")
    assert "pruned to 50% sparsity: 3 epochs of fine-tuning" in text, text
    st = weight_stats(out)
    assert 0.49 <= st.sparsity <= 0.52, st
    rows = report(text)
    assert rows["after"][5] == f"{100 * st.sparsity:.1f}%" and float(rows["before"][5].rstrip("%")) < 5, rows
    before_gzip, after_gzip = float(rows["before"][3]), float(rows["after"][3])  # KB
    assert after_gzip < 0.8 * before_gzip, rows  # the same size on disk, smaller compressed (the seed's point)
    assert abs(float(rows["before"][1]) - float(rows["after"][1])) / float(rows["before"][1]) < 0.02, rows
    assert top1(rows["after"]) >= 0.8 and top1(rows["after"]) >= top1(rows["before"]) - 0.05, rows


def test_clustering_leaves_n_distinct_weights_a_channel(
    capsys: pytest.CaptureFixture[str], digits: dict[str, Path]
) -> None:
    require_tfmot()
    out, text = convert(capsys, digits, "clustered", "--cluster", "8")  # float32: 8 distinct floats a layer
    st = weight_stats(out)
    assert 2 <= st.distinct_per_channel <= 8, st
    rows = report(text)
    assert int(rows["after"][6]) == st.distinct_per_channel and int(rows["before"][6]) > 100, rows
    assert float(rows["after"][3]) < 0.5 * float(rows["before"][3]), rows
    assert top1(rows["after"]) >= 0.75, rows


def test_a_keras2_h5_is_taken_as_it_is(capsys: pytest.CaptureFixture[str], digits: dict[str, Path]) -> None:
    require_tfmot()
    out, text = convert(capsys, digits, "keras2", "--cluster", "4", source="keras2")
    st = weight_stats(out)
    assert 2 <= st.distinct_per_channel <= 4, st
    assert top1(report(text)["after"]) >= 0.6, text


def test_pruning_clustering_and_qat_together_keep_the_zeros_and_centroids(
    capsys: pytest.CaptureFixture[str], digits: dict[str, Path]
) -> None:
    require_tfmot()
    args = ("--quantize", "int8", "--prune", "0.5", "--cluster", "8", "--qat")
    out, text = convert(capsys, digits, "pcqat", *args)
    st = weight_stats(out)
    assert st.sparsity >= 0.45 and st.distinct_per_channel <= 8, st
    rows = report(text)
    assert top1(rows["after"]) >= 0.75, rows
    assert "all 7 of 7 operators would map to the Edge TPU" in text or "edgetpu_compiler:" in text, text


def test_qat_refuses_a_layer_it_cannot_quantise_and_a_missing_tfmot_is_named(
    capsys: pytest.CaptureFixture[str], digits: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    require_tfmot()
    out = digits["root"] / "refused.tflite"
    argv = ("convert", digits["rescaling"], "-o", out, "--quantize", "int8", "--qat", "--train", digits["train"])
    rc, _, err = run(capsys, *argv)
    assert rc == 2 and err.count("\n") == 1, err
    assert "--qat: TensorFlow Model Optimization cannot quantise the Rescaling layer of this model" in err
    assert not out.exists()
    monkeypatch.setitem(sys.modules, "tensorflow_model_optimization", None)
    rc, _, err = run(capsys, "convert", digits["plain"], "-o", out, "--prune", "0.5", "--train", digits["train"])
    assert rc == 2 and "pruning, clustering and QAT need tf_keras and tensorflow-model-optimization" in err, err
