"""Models: tensors, quantisation, task detection, SSD output order, labels, errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from edged import tflite_schema
from edged.errors import ConfigError, ModelError
from edged.labels import parse_labels, read_labels
from edged.model import (
    Quantization,
    TensorSpec,
    _spec,
    cpu_twin,
    detect_task,
    edgetpu_twin,
    load_model,
    resolve_ssd_outputs,
)
from edged.runtime import get_runtime

# --------------------------------------------------------------------------- labels


def test_labels_one_per_line_keeps_line_numbers() -> None:
    assert parse_labels("background\ntench\ngoldfish\n") == {0: "background", 1: "tench", 2: "goldfish"}
    # a gap (blank line) keeps its id unused
    assert parse_labels("person\n\ncar\n") == {0: "person", 2: "car"}


@pytest.mark.parametrize(
    "text", ["0 person\n1 bicycle\n5 bus\n", "0: person\n1: bicycle\n5: bus\n", "0,person\n1,bicycle\n5,bus"]
)
def test_labels_id_pairs(text: str) -> None:
    assert parse_labels(text) == {0: "person", 1: "bicycle", 5: "bus"}


def test_labels_pairs_with_spaces_in_names() -> None:
    assert parse_labels("0  traffic light\n12 stop sign\n") == {0: "traffic light", 12: "stop sign"}


def test_plain_list_with_leading_digits_is_not_misread() -> None:
    # "7 up" alone would look like a pair, but the other lines are not pairs
    assert parse_labels("cola\n7 up\nwater\n") == {0: "cola", 1: "7 up", 2: "water"}


def test_labels_files_of_testdata(models_dir: Path) -> None:
    imagenet = read_labels(models_dir / "imagenet_labels.txt")
    assert len(imagenet) == 1001 and imagenet[653] == "military uniform" and imagenet[0] == "background"
    coco = read_labels(models_dir / "coco_labels.txt")
    assert coco[0] == "person" and coco[16] == "cat" and coco[37] == "kite"


def test_labels_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="labels file not found"):
        read_labels(tmp_path / "nope.txt")
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(ConfigError, match="empty"):
        read_labels(tmp_path / "empty.txt")
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00\x81")
    with pytest.raises(ConfigError, match="not UTF-8"):
        read_labels(tmp_path / "bin.txt")


# --------------------------------------------------------------------------- SSD output order


def _t(index: int, name: str, shape: tuple[int, ...], dtype: str = "float32") -> TensorSpec:
    return TensorSpec(index, name, shape, dtype, Quantization((), ()))


TF1 = [
    _t(167, "TFLite_Detection_PostProcess", (1, 10, 4)),
    _t(168, "TFLite_Detection_PostProcess:1", (1, 10)),
    _t(169, "TFLite_Detection_PostProcess:2", (1, 10)),
    _t(170, "TFLite_Detection_PostProcess:3", (1,)),
]
# a TF2 export: scores, boxes, count, classes, with uninformative tensor names
TF2 = [
    _t(400, "StatefulPartitionedCall:1", (1, 10)),
    _t(401, "StatefulPartitionedCall:3", (1, 10, 4)),
    _t(402, "StatefulPartitionedCall:0", (1,)),
    _t(403, "StatefulPartitionedCall:2", (1, 10)),
]


def test_ssd_tf1_order_by_tensor_names() -> None:
    assert resolve_ssd_outputs(TF1) == {"boxes": 167, "classes": 168, "scores": 169, "count": 170}
    # the same tensors listed in another order resolve the same
    assert resolve_ssd_outputs(TF1[::-1]) == {"boxes": 167, "classes": 168, "scores": 169, "count": 170}


def test_ssd_tf2_order_by_signature_output_n() -> None:
    sig = {"output_0": 402, "output_1": 400, "output_2": 403, "output_3": 401}
    assert resolve_ssd_outputs(TF2, sig) == {"count": 402, "scores": 400, "classes": 403, "boxes": 401}


def test_ssd_tf2_order_by_signature_detection_names() -> None:
    sig = {"detection_scores": 400, "detection_boxes": 401, "num_detections": 402, "detection_classes": 403}
    assert resolve_ssd_outputs(TF2, sig) == {"scores": 400, "boxes": 401, "count": 402, "classes": 403}


def test_ssd_tf2_tensor_names() -> None:
    named = [
        _t(1, "detection_scores", (1, 10)),
        _t(2, "detection_boxes", (1, 10, 4)),
        _t(3, "num_detections", (1,)),
        _t(4, "detection_classes", (1, 10)),
    ]
    assert resolve_ssd_outputs(named) == {"scores": 1, "boxes": 2, "count": 3, "classes": 4}


def test_ssd_shapes_as_last_resort() -> None:
    anon = [_t(10, "a", (1, 10, 4)), _t(11, "b", (1, 10)), _t(12, "c", (1, 10)), _t(13, "d", (1,))]
    assert resolve_ssd_outputs(anon) == {"boxes": 10, "classes": 11, "scores": 12, "count": 13}


def test_detect_task() -> None:
    assert detect_task([_t(0, "prob", (1, 1001), "uint8")], [], None) == ("classification", None)
    assert detect_task([_t(0, "prob", (1, 10), "int8")], [], None)[0] == "classification"
    assert detect_task(TF1, ["TFLite_Detection_PostProcess"], None)[0] == "detection"
    for bad in ([_t(0, "seg", (1, 64, 64, 21))], [_t(0, "a", (1, 10)), _t(1, "b", (1, 4))]):
        with pytest.raises(ValueError):
            detect_task(bad, [], None)


def test_per_channel_quantisation_is_reported() -> None:
    detail = {
        "index": 3,
        "name": "w",
        "shape": np.array([8, 3, 3, 3]),
        "dtype": np.int8,
        "quantization": (0.0, 0),
        "quantization_parameters": {
            "scales": np.array([0.1, 0.2] * 4, np.float32),
            "zero_points": np.zeros(8, np.int32),
            "quantized_dimension": 0,
        },
    }
    spec = _spec(detail)
    assert spec.quantization.per_channel and len(spec.quantization.scales) == 8
    assert spec.to_dict()["quantization"]["scales"][1] == pytest.approx(0.2)


# --------------------------------------------------------------------------- real models


def test_reference_models_tensors_and_tasks(models_dir: Path) -> None:
    ssd = load_model(models_dir / "ssd_mobilenet_v1_coco_quant_postprocess.tflite").info
    assert ssd.task == "detection"
    assert ssd.input.shape == (1, 300, 300, 3) and ssd.input.dtype == "uint8"
    assert ssd.input.quantization.scale == pytest.approx(0.0078125) and ssd.input.quantization.zero_point == 128
    names = {t.index: t.name for t in ssd.outputs}
    assert ssd.ssd_outputs is not None
    assert names[ssd.ssd_outputs["boxes"]] == "TFLite_Detection_PostProcess"
    assert names[ssd.ssd_outputs["count"]] == "TFLite_Detection_PostProcess:3"
    assert "TFLite_Detection_PostProcess" in ssd.custom_ops

    tf2 = load_model(models_dir / "tf2_mobilenet_v2_1.0_224_ptq.tflite").info
    assert tf2.task == "classification" and tf2.input.quantization.zero_point == 127
    assert tf2.outputs[0].shape == (1, 1001) and tf2.outputs[0].quantization.scale == pytest.approx(1 / 256)
    assert len(tf2.sha256) == 64


def test_schema_reader_on_reference_models(models_dir: Path) -> None:
    def summary(name: str) -> tflite_schema.ModelSummary:
        return tflite_schema.read_summary((models_dir / name).read_bytes())

    assert summary("mobilenet_v1_0.25_128_quant_edgetpu.tflite").custom_ops == ["edgetpu-custom-op"]
    assert summary("mobilenet_v1_0.25_128_quant.tflite").custom_ops == []
    assert sum(summary("mobilenet_v2_1.0_224_quant.tflite").op_counts.values()) > 50
    with pytest.raises(ValueError):
        tflite_schema.read_summary((models_dir / "invalid" / "truncated.tflite").read_bytes())


def test_model_errors(models_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="model file not found"):
        load_model(tmp_path / "missing.tflite")
    with pytest.raises(ModelError, match="not a file"):
        load_model(tmp_path)
    (tmp_path / "text.tflite").write_text("hello, I am not a model\n")
    with pytest.raises(ModelError, match="not a TFLite model"):
        load_model(tmp_path / "text.tflite")
    with pytest.raises(ModelError, match="corrupt or truncated"):
        load_model(models_dir / "invalid" / "truncated.tflite")
    with pytest.raises(ModelError, match="custom operator 'fake-op-double'"):
        load_model(models_dir / "invalid" / "custom_op_unresolved.tflite")
    with pytest.raises(ModelError, match=r"Edge TPU.*CPU twin .*mobilenet_v1_0.25_128_quant\.tflite sits beside it"):
        load_model(models_dir / "mobilenet_v1_0.25_128_quant_edgetpu.tflite")
    lonely = tmp_path / "lonely_edgetpu.tflite"
    shutil.copy(models_dir / "mobilenet_v1_0.25_128_quant_edgetpu.tflite", lonely)
    with pytest.raises(ModelError, match="no CPU twin found"):
        load_model(lonely)


def test_error_messages_are_one_line(models_dir: Path) -> None:
    for bad in (
        "invalid/truncated.tflite",
        "invalid/custom_op_unresolved.tflite",
        "mobilenet_v1_0.25_128_quant_edgetpu.tflite",
    ):
        with pytest.raises(ModelError) as info:
            load_model(models_dir / bad)
        assert "\n" not in str(info.value)


def test_cpu_twin_naming() -> None:
    assert cpu_twin("/m/foo_edgetpu.tflite") == Path("/m/foo.tflite")
    assert cpu_twin("/m/foo.tflite") is None
    assert edgetpu_twin("/m/foo.tflite") == Path("/m/foo_edgetpu.tflite")  # what edgetpu_compiler writes
    assert cpu_twin(edgetpu_twin("/m/foo.tflite")) == Path("/m/foo.tflite")


def test_unknown_runtime_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown runtime"):
        get_runtime("onnxruntime")


def test_runtime_choice_is_honoured(models_dir: Path) -> None:
    """CI runs the suite once per runtime with EDGED_RUNTIME set; the models really use it."""
    import os

    wanted = os.environ.get("EDGED_RUNTIME")
    info = load_model(models_dir / "mobilenet_v1_0.25_128_quant.tflite").info
    if wanted:
        assert info.runtime == wanted
    else:
        assert info.runtime in ("ai_edge_litert", "tflite_runtime", "tensorflow")
