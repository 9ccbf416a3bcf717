"""``edged inspect`` against what edgetpu_compiler really did, operator by operator.

``../shared/testdata/compat/compiler_truth.json`` holds, for 13 models of Coral's own test data,
the operators Coral's compiled ``*_edgetpu.tflite`` left outside its ``edgetpu-custom-op``. The
static check must put exactly those on the CPU and every other one on the Edge TPU. The models
cover what a single cut in stored order got wrong: a CAST + QUANTIZE prologue and branches that
still map after the first CPU operator (movenet), resizes the compiler keeps on the CPU and a TILE
it maps (the DeepLabs), an int16 LSTM state (keras_lstm).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edged import compat

MODELS = [
    "bodypix_mobilenet_v1_075_512_512_16_quant_decoder.tflite",
    "deeplab_mobilenet_edgetpu_slim_cityscapes_quant.tflite",
    "deeplabv3_mnv2_dm05_pascal_quant.tflite",
    "deeplabv3_mnv2_pascal_quant.tflite",
    "keras_lstm_mnist_ptq.tflite",
    "mobilenet_v1_0.25_128_quant.tflite",
    "mobilenet_v1_0.75_192_quant.tflite",
    "mobilenet_v1_1.0_224_quant_embedding_extractor.tflite",
    "movenet_single_pose_lightning_ptq.tflite",
    "posenet_mobilenet_v1_075_353_481_16_quant_decoder.tflite",
    "posenet_mobilenet_v1_075_481_641_16_quant_decoder.tflite",
    "posenet_mobilenet_v1_075_721_1281_16_quant_decoder.tflite",
    "split_concat.tflite",
]


@pytest.fixture(scope="module")
def truth(testdata: Path) -> dict:
    return json.loads((testdata / "compat" / "compiler_truth.json").read_text())["models"]


def report(testdata: Path, name: str) -> compat.CompatReport:
    return compat.inspect_file(testdata / "compat" / name)[2]


def test_the_truth_holds_these_models(truth) -> None:
    assert sorted(truth) == MODELS  # a model added to the truth is a model to test


@pytest.mark.parametrize("name", MODELS)
def test_every_operator_placed_as_the_compiler_placed_it(testdata, truth, name: str) -> None:
    t = truth[name]
    r = report(testdata, name)
    assert len(r.operators) == t["total"]
    placed = {o.index: ("cpu" if not o.mapped else "tpu") for o in r.operators}
    real = {i: ("cpu" if i in set(t["cpu_indices"]) else "tpu") for i in range(t["total"])}
    wrong = {i: (r.operators[i].name, placed[i], r.operators[i].status) for i in real if placed[i] != real[i]}
    assert wrong == {}, wrong
    assert (r.tpu_count, r.cpu_count) == (t["tpu_ops"], t["cpu_ops"])
    first = r.first_unmapped
    if t["first_cpu"] is None:
        assert first is None or first.index not in real or real[first.index] == "cpu"
    assert int(r.tpu_count > 0) == t["segments"]  # one Edge TPU segment, as the compiler made


def test_movenet_prologue_and_the_branches_after_the_first_cpu_operator(testdata) -> None:
    r = report(testdata, "movenet_single_pose_lightning_ptq.tflite")
    ops = r.operators
    assert [(o.name, o.status) for o in ops[:2]] == [
        ("CAST", compat.INPUT_QUANTIZE),
        ("QUANTIZE", compat.INPUT_QUANTIZE),
    ]
    assert "of the model input, before the Edge TPU" in ops[0].reason
    cut = r.first_unmapped
    assert (cut.index, cut.name) == (89, "ARG_MAX")
    # operators after the cut that read only Edge TPU outputs stay in the segment
    assert ops[100].mapped and ops[106].mapped and not ops[105].mapped
    dependent = next(o for o in ops if o.status == compat.AFTER_CUT)  # maps alone, reads a CPU operator's output
    assert dependent.index > 89 and dependent.reason.startswith("reads the output of #"), dependent
    assert "the rest do not depend on it" in r.verdict


def test_resize_tile_and_their_confidence(testdata) -> None:
    v3 = report(testdata, "deeplabv3_mnv2_pascal_quant.tflite").operators
    assert v3[64].status == compat.LIMITATION and "upsamples a 1x1 map to 33x33" in v3[64].reason
    assert v3[64].confidence == compat.LIKELY
    slim = report(testdata, "deeplab_mobilenet_edgetpu_slim_cityscapes_quant.tflite")
    tile, identity, upscale = slim.operators[76], slim.operators[81], slim.operators[82]
    assert tile.name == "TILE" and tile.mapped and tile.confidence == compat.LIKELY
    assert any("TILE is not in Coral's table" in n for n in slim.notes)
    assert identity.mapped and identity.confidence == compat.LIKELY  # 33x33 -> 33x33
    assert upscale.status == compat.LIMITATION and "33x33 -> 513x513 is not an integer scale" in upscale.reason


def test_lstm_int16_state_maps_and_reshape_is_unknown(testdata) -> None:
    ops = report(testdata, "keras_lstm_mnist_ptq.tflite").operators
    lstm = next(o for o in ops if o.name == "UNIDIRECTIONAL_SEQUENCE_LSTM")
    assert lstm.mapped and lstm.confidence == compat.LIKELY
    assert {o.confidence for o in ops if o.name == "RESHAPE"} == {compat.UNKNOWN}


def test_the_json_and_the_text_say_how_sure(testdata) -> None:
    r = report(testdata, "keras_lstm_mnist_ptq.tflite")
    d = r.to_dict()
    assert {o["operator"]: o["confidence"] for o in d["operators"]}["UNIDIRECTIONAL_SEQUENCE_LSTM"] == "likely"
    assert {(u["operator"], u["confidence"]) for u in d["uncertain"]} >= {("RESHAPE", "unknown")}
    lines = compat.format_report(r)
    assert any(
        ln.startswith("  mapped, less than certain: ") and "UNIDIRECTIONAL_SEQUENCE_LSTM (likely)" in ln for ln in lines
    )


def test_multiple_subgraphs_maps_around_the_cpu_operator_as_the_seed_reports() -> None:
    """The seed article compiled with -a: the operators after its LeakyReLU still mapped."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    model = root / "tests" / "data" / "compat" / "leaky_relu_int8.tflite"
    one = compat.inspect_file(model)[2]
    assert (one.tpu_count, one.tpu_segments) == (1, 1)
    several = compat.inspect_file(model, multiple_subgraphs=True)[2]
    assert (several.tpu_count, several.cpu_count, several.tpu_segments) == (6, 1, 2)
    assert several.after_cut == [] and "in 2 segment(s) (-a)" in several.verdict
    proc = subprocess.run(
        [sys.executable, "-m", "edged", "inspect", "--json", "-a", str(model)],
        capture_output=True, text=True, timeout=120, cwd=root,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)["edgetpu"]
    assert (report["operations_on_edgetpu"], report["tpu_segments"]) == (6, 2)
