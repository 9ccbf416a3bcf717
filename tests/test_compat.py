"""The Edge TPU compatibility report of ``edged inspect`` (edged/compat*.py), without TensorFlow.

The small models in tests/data/compat/ are built by tests/make_compat_models.py (TensorFlow);
the last test rebuilds them when TensorFlow is importable and checks the same reports. The
reference models are checked against what edgetpu_compiler reports for them: every operator
maps for the quantised MobileNets; the SSD maps up to its TFLite_Detection_PostProcess.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from edged import compat, tflite_schema
from edged.edgetpu_ops import BUILTIN_OPERATORS, EDGETPU_OPS, builtin_name
from edged.errors import ModelError

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data" / "compat"
M, NS, DT = compat.MAPPED, compat.NOT_SUPPORTED, compat.DATA_TYPE
CUT = compat.AFTER_CUT

# model -> [(operator, status)] in execution order, and the cut (index, operator) or None
EXPECTED: dict[str, tuple[list[tuple[str, str]], tuple[int, str] | None]] = {
    "all_supported_int8.tflite": (
        [("CONV_2D", M), ("MAX_POOL_2D", M), ("RESHAPE", M), ("FULLY_CONNECTED", M), ("SOFTMAX", M)],
        None,
    ),
    "leaky_relu_int8.tflite": (
        [
            ("CONV_2D", M),
            ("LEAKY_RELU", NS),
            ("CONV_2D", CUT),
            ("MAX_POOL_2D", CUT),
            ("RESHAPE", CUT),
            ("FULLY_CONNECTED", CUT),
            ("SOFTMAX", CUT),
        ],
        (1, "LEAKY_RELU"),
    ),
    "float_io_int8.tflite": (
        [
            ("QUANTIZE", compat.INPUT_QUANTIZE),
            ("CONV_2D", M),
            ("MAX_POOL_2D", M),
            ("RESHAPE", M),
            ("FULLY_CONNECTED", M),
            ("SOFTMAX", M),
            ("DEQUANTIZE", DT),
        ],
        (6, "DEQUANTIZE"),
    ),
    "float32.tflite": (
        [("CONV_2D", DT), ("MAX_POOL_2D", DT), ("RESHAPE", DT), ("FULLY_CONNECTED", DT), ("SOFTMAX", DT)],
        (0, "CONV_2D"),
    ),
    "rank5_int8.tflite": (
        [
            ("CONV_2D", M),
            ("RESHAPE", compat.RANK),
            ("TRANSPOSE", compat.RANK),
            ("RESHAPE", compat.RANK),
            ("FULLY_CONNECTED", CUT),
        ],
        (1, "RESHAPE"),
    ),
    "limits_int8.tflite": (
        [("CONV_2D", compat.LIMITATION), ("MEAN", compat.LIMITATION), ("RESHAPE", CUT), ("FULLY_CONNECTED", CUT)],
        (0, "CONV_2D"),
    ),
    "dynamic_batch_int8.tflite": (
        [
            ("CONV_2D", compat.MODEL_REFUSED),
            ("MAX_POOL_2D", compat.MODEL_REFUSED),
            ("SHAPE", NS),
            ("STRIDED_SLICE", DT),
            ("PACK", DT),
            ("RESHAPE", compat.NOT_CONSTANT),
            ("FULLY_CONNECTED", compat.MODEL_REFUSED),
            ("SOFTMAX", compat.MODEL_REFUSED),
        ],
        (0, "CONV_2D"),
    ),
    "dynamic_int8.tflite": ([("CONV_2D", compat.DYNAMIC), ("CONV_2D", compat.DYNAMIC)], (0, "CONV_2D")),
    "fitted_int8.tflite": ([("CONV_2D", M), ("SOFTMAX", M), ("RESIZE_BILINEAR", M)], None),
}


def report_of(path: Path) -> compat.CompatReport:
    return compat.inspect_file(path)[2]


def summary(report: compat.CompatReport) -> tuple[list[tuple[str, str]], tuple[int, str] | None]:
    cut = report.first_unmapped
    return [(o.name, o.status) for o in report.operators], None if cut is None else (cut.index, cut.name)


def edged(*args: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edged", *map(str, args)], capture_output=True, text=True, timeout=120, cwd=ROOT
    )


# ------------------------------------------------------------------------------ op tables


def test_builtin_operator_table_numbers() -> None:
    known = {0: "ADD", 3: "CONV_2D", 4: "DEPTHWISE_CONV_2D", 9: "FULLY_CONNECTED", 22: "RESHAPE", 25: "SOFTMAX"}
    known.update(
        {
            32: "CUSTOM",
            40: "MEAN",
            98: "LEAKY_RELU",
            114: "QUANTIZE",
            117: "HARD_SWISH",
            127: "PLACEHOLDER_FOR_GREATER_OP_CODES",
        }
    )
    for code, name in known.items():
        assert builtin_name(code) == name
    assert len(set(BUILTIN_OPERATORS)) == len(BUILTIN_OPERATORS)
    assert builtin_name(100000) == "BUILTIN_100000"
    assert set(EDGETPU_OPS) <= set(BUILTIN_OPERATORS)
    for absent in ("LEAKY_RELU", "HARD_SWISH", "DEQUANTIZE", "GATHER", "ARG_MAX", "DIV", "EXP"):
        assert absent not in EDGETPU_OPS


# ------------------------------------------------------------------------- models we build


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_compat_report(name: str) -> None:
    ops, cut = EXPECTED[name]
    report = report_of(DATA / name)
    assert not report.compiled
    assert summary(report) == (ops, cut)
    assert report.tpu_count == sum(s == M for _, s in ops)
    assert report.tpu_count + report.cpu_count == len(ops)
    for o in report.operators:  # one reason line for every operator that does not map
        assert o.mapped == (o.reason is None), o
        assert o.reason is None or "\n" not in o.reason


def test_leaky_relu_cut_reported() -> None:
    report = report_of(DATA / "leaky_relu_int8.tflite")
    cut = report.first_unmapped
    assert cut is not None and "LeakyReLU" in (cut.reason or "")
    assert [(o.index, o.name) for o in report.after_cut] == [
        (2, "CONV_2D"),
        (3, "MAX_POOL_2D"),
        (4, "RESHAPE"),
        (5, "FULLY_CONNECTED"),
        (6, "SOFTMAX"),
    ]
    assert "cut at #1 LEAKY_RELU" in report.verdict
    assert report.model_errors == []


def test_float32_model_refused() -> None:
    report = report_of(DATA / "float32.tflite")
    assert report.tpu_count == 0
    assert any("not quantized" in e for e in report.model_errors)
    assert all("float32" in (o.reason or "") for o in report.operators)


def test_dynamic_model_refused() -> None:
    report = report_of(DATA / "dynamic_int8.tflite")
    assert any("dynamic-sized" in e for e in report.model_errors)
    assert "-1" in (report.operators[0].reason or "")
    assert "refuse" in report.verdict


def test_documented_limitations_reported() -> None:
    ops = report_of(DATA / "limits_int8.tflite").operators
    assert ops[0].reason == "Conv2d: dilation 2x1 differs in y and x"
    assert ops[1].reason == "Mean: z-reduction over 3 channels (must be a multiple of 4)"


def test_rules_fitted_to_the_compiler_map_and_say_likely() -> None:
    report = report_of(DATA / "fitted_int8.tflite")
    conv, softmax, resize = report.operators
    assert all(o.mapped for o in report.operators)
    assert [o.confidence for o in (conv, softmax, resize)] == [compat.LIKELY] * 3
    # the same dilation on a 3x3 kernel is still refused, and that verdict is certain (Coral's table)
    refused = report_of(DATA / "limits_int8.tflite").operators[0]
    assert refused.status == compat.LIMITATION and refused.confidence == compat.CERTAIN


def test_dynamic_batch_flatten_refused() -> None:
    report = report_of(DATA / "dynamic_batch_int8.tflite")
    assert len(report.model_errors) == 1 and "#5 RESHAPE" in report.model_errors[0]
    assert report.tpu_count == 0
    assert any("dynamic batch size" in n for n in report.notes)


def test_float_io_keeps_the_input_quantize_off_the_cut() -> None:
    report = report_of(DATA / "float_io_int8.tflite")
    assert report.tpu_count == 5 and report.cpu_count == 2
    assert report.after_cut == []


def test_table_groups_like_the_compiler() -> None:
    rows = report_of(DATA / "leaky_relu_int8.tflite").table()
    assert rows[:3] == [("CONV_2D", 1, M), ("LEAKY_RELU", 1, NS), ("CONV_2D", 1, CUT)]
    assert sum(c for _, c, _ in rows) == 7


# ---------------------------------------------------------------------- reference models


@pytest.mark.parametrize(
    "name,total",
    [
        ("mobilenet_v2_1.0_224_quant.tflite", 66),
        ("mobilenet_v1_0.25_128_quant.tflite", 31),
        ("tf2_mobilenet_v2_1.0_224_ptq.tflite", 68),
    ],
)
def test_reference_quantised_mobilenets_map_entirely(models_dir: Path, name: str, total: int) -> None:
    report = report_of(models_dir / name)
    assert not report.compiled and report.model_errors == []
    assert report.first_unmapped is None
    assert report.tpu_count == total and report.cpu_count == 0


def test_reference_ssd_cut_at_postprocess(models_dir: Path) -> None:
    report = report_of(models_dir / "ssd_mobilenet_v1_coco_quant_postprocess.tflite")
    cut = report.first_unmapped
    assert cut is not None and (cut.index, cut.name, cut.status) == (63, "TFLite_Detection_PostProcess", NS)
    assert cut.index == len(report.operators) - 1  # the last operator
    assert report.tpu_count == 63 and report.cpu_count == 1
    assert report.after_cut == []


def test_reference_compiled_model_recognised(models_dir: Path) -> None:
    report = report_of(models_dir / "mobilenet_v1_0.25_128_quant_edgetpu.tflite")
    assert report.compiled and report.tpu_segments == 1
    assert [(o.name, o.status) for o in report.operators] == [("edgetpu-custom-op", compat.COMPILED)]
    assert report.first_unmapped is None and report.cpu_count == 0


# --------------------------------------------------------------------------------- the CLI


@pytest.mark.system  # edged in a subprocess
def test_cli_json_leaky_relu() -> None:
    proc = edged("inspect", "--json", DATA / "leaky_relu_int8.tflite")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert {"operator": "CONV_2D", "count": 2} in info["operators"]
    tpu = info["edgetpu"]
    assert tpu["compiled"] is False
    assert tpu["first_unmapped"]["index"] == 1 and tpu["first_unmapped"]["operator"] == "LEAKY_RELU"
    assert tpu["operations_on_edgetpu"] == 1 and tpu["operations_on_cpu"] == 6
    assert [o["index"] for o in tpu["after_cut_otherwise_supported"]] == [2, 3, 4, 5, 6]
    assert {"operator": "LEAKY_RELU", "count": 1, "status": NS} in tpu["table"]
    assert info["task"] == "classification" and info["inputs"][0]["dtype"] == "int8"


@pytest.mark.system  # edged in a subprocess
def test_cli_human_leaky_relu() -> None:
    proc = edged("inspect", DATA / "leaky_relu_int8.tflite")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    header = next(ln for ln in lines if ln.split()[:3] == ["Operator", "Count", "Status"])
    rows = lines[lines.index(header) + 1 : lines.index(header) + 7]
    assert rows[1].split()[:2] == ["LEAKY_RELU", "1"] and rows[1].endswith(NS)
    assert rows[2].endswith(CUT)
    assert "Number of operations that will run on Edge TPU: 1" in proc.stdout
    assert "Number of operations that will run on CPU: 6" in proc.stdout
    assert "(the cut): #1 LEAKY_RELU" in proc.stdout


@pytest.mark.system  # edged in a subprocess
def test_cli_model_without_interpreter_still_reported() -> None:
    # a 4-D output is no task edged knows, so the interpreter part fails: the report goes on
    proc = edged("inspect", "--json", DATA / "dynamic_int8.tflite")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["runtime"] is None and info["interpreter_error"]
    assert info["inputs"][0]["shape_signature"] == [1, -1, -1, 1]
    assert info["edgetpu"]["model_errors"]
    human = edged("inspect", DATA / "dynamic_int8.tflite")
    assert human.returncode == 0 and "runtime:  not loaded" in human.stdout
    assert "Dynamic-sized tensors are not supported" in human.stdout


@pytest.mark.system  # edged in a subprocess
def test_cli_compiled_model(models_dir: Path) -> None:
    proc = edged("inspect", "--json", models_dir / "mobilenet_v1_0.25_128_quant_edgetpu.tflite")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["edgetpu"]["compiled"] is True and info["edgetpu"]["tpu_segments"] == 1
    assert info["edgetpu"]["operations_on_edgetpu"] is None  # not recorded in a compiled file
    assert info["operators"] == [{"operator": "edgetpu-custom-op", "count": 1}]
    assert "compiled" in info["interpreter_error"]
    human = edged("inspect", models_dir / "mobilenet_v1_0.25_128_quant_edgetpu.tflite")
    assert human.returncode == 0 and "compiled for the Edge TPU: 1 edgetpu-custom-op" in human.stdout


@pytest.mark.system  # edged in a subprocess
def test_cli_ssd_human(models_dir: Path) -> None:
    proc = edged("inspect", models_dir / "ssd_mobilenet_v1_coco_quant_postprocess.tflite")
    assert proc.returncode == 0, proc.stderr
    assert "Number of operations that will run on Edge TPU: 63" in proc.stdout
    assert "(the cut): #63 TFLite_Detection_PostProcess" in proc.stdout
    assert "[boxes]" in proc.stdout  # the interpreter part is still there


@pytest.mark.system  # edged in a subprocess
def test_cli_reference_invalid_models(models_dir: Path) -> None:
    # an unknown custom operator: no interpreter, but a report (the custom op is the cut)
    proc = edged("inspect", "--json", models_dir / "invalid" / "custom_op_unresolved.tflite")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert "fake-op-double" in info["interpreter_error"]
    assert info["edgetpu"]["first_unmapped"]["operator"] == "fake-op-double"
    # a truncated file: the one-line error
    proc = edged("inspect", models_dir / "invalid" / "truncated.tflite")
    assert proc.returncode != 0 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "is corrupt or truncated" in proc.stderr


@pytest.mark.system  # edged in a subprocess
@pytest.mark.parametrize("content", [b"not a model at all", b""])
def test_cli_not_a_model_one_line_error(tmp_path: Path, content: bytes) -> None:
    f = tmp_path / "x.tflite"
    f.write_bytes(content)
    proc = edged("inspect", f)
    assert proc.returncode != 0 and proc.stdout == ""
    assert proc.stderr.strip().count("\n") == 0 and "is not a TFLite model" in proc.stderr


@pytest.mark.system  # edged in a subprocess
def test_cli_missing_file_one_line_error(tmp_path: Path) -> None:
    proc = edged("inspect", "--json", tmp_path / "nope.tflite")
    assert (
        proc.returncode != 0
        and proc.stderr.strip() == f"edged: error: model file not found: {tmp_path / 'nope.tflite'}"
    )


def test_truncated_or_damaged_files_give_model_error() -> None:
    data = (DATA / "leaky_relu_int8.tflite").read_bytes()
    failures = 0
    for n in range(8, len(data), 61):
        try:
            compat.analyse(tflite_schema.read_graph(data[:n]))
        except ValueError:
            failures += 1
    assert failures > 0
    for n in range(8, len(data), 61):  # through the public entry point: always a ModelError
        with pytest.raises(ModelError):
            _inspect_bytes(data[:n])
    for at in range(8, len(data), 37):  # single damaged bytes: a ModelError or a report, never a crash
        damaged = bytearray(data)
        damaged[at] ^= 0xFF
        try:
            _inspect_bytes(bytes(damaged))
        except ModelError:
            pass


def _inspect_bytes(data: bytes) -> compat.CompatReport:
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".tflite") as f:
        f.write(data)
        f.flush()
        return compat.inspect_file(f.name)[2]


# ------------------------------------------------------------------ rebuilt with TensorFlow


@pytest.mark.system  # edged in a subprocess
def test_rebuilt_models_give_the_same_reports(tmp_path: Path) -> None:
    pytest.importorskip("tensorflow")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "make_compat_models.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.glob("*.tflite")) == sorted(EXPECTED)
    for name, expected in EXPECTED.items():
        assert summary(report_of(tmp_path / name)) == expected, name
