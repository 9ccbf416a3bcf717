"""Reading a .tflite model: its tensors, their quantisation, its task, and its labels.

``load_model`` builds an interpreter and returns a :class:`LoadedModel`; every way a
model file can be wrong ends in a one-line :class:`~edged.errors.ModelError`.
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import tflite_schema
from .errors import ModelError
from .labels import read_labels as read_labels  # re-exported: engine.py and bench/ import it from here
from .runtime import Runtime, get_runtime, native_banners_silenced
from .yolo_layout import YoloEnd2EndOutput, YoloLayout, YoloOutput, YoloSplitOutput, resolve_yolo

# re-exported: tests and bench/ import them from here
from .yolo_layout import resolve_yolo_end2end as resolve_yolo_end2end
from .yolo_layout import resolve_yolo_output as resolve_yolo_output
from .yolo_layout import resolve_yolo_split as resolve_yolo_split
from .yolo_layout import yolo_anchor_count as yolo_anchor_count

EDGETPU_CUSTOM_OP = "edgetpu-custom-op"  # the operator that holds a compiled Edge TPU segment
EDGETPU_SUFFIX = "_edgetpu"  # foo_edgetpu.tflite is foo.tflite compiled for the Edge TPU: its CPU twin is foo.tflite
SSD_CUSTOM_OP = "TFLite_Detection_PostProcess"


@dataclass(frozen=True)
class Quantization:
    """Affine quantisation ``real = scale * (q - zero_point)``; per-channel when scales has >1 entry."""

    scales: tuple[float, ...]
    zero_points: tuple[int, ...]
    axis: int = 0

    @property
    def quantized(self) -> bool:
        return bool(self.scales) and any(s != 0.0 for s in self.scales)

    @property
    def per_channel(self) -> bool:
        return len(self.scales) > 1

    @property
    def scale(self) -> float:
        return self.scales[0] if self.scales else 0.0

    @property
    def zero_point(self) -> int:
        return self.zero_points[0] if self.zero_points else 0


@dataclass(frozen=True)
class TensorSpec:
    index: int
    name: str
    shape: tuple[int, ...]
    dtype: str  # numpy dtype name: uint8, int8, float32, ...
    quantization: Quantization

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        q = self.quantization
        d["quantization"] = {
            "scale": q.scale,
            "zero_point": q.zero_point,
            **({"scales": list(q.scales), "zero_points": list(q.zero_points), "axis": q.axis} if q.per_channel else {}),
        }
        d["shape"] = list(self.shape)
        return d


@dataclass
class ModelInfo:
    path: str
    sha256: str
    size_bytes: int
    runtime: str
    task: str  # "classification" | "detection"
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    custom_ops: list[str] = field(default_factory=list)
    description: str | None = None
    # detection only: output tensor index for each role (SSD), or the YOLO layout of the outputs
    ssd_outputs: dict[str, int] | None = None
    yolo_output: YoloOutput | None = None  # one head tensor
    yolo_split: YoloSplitOutput | None = None  # boxes and class scores apart
    yolo_end2end: YoloEnd2EndOutput | None = None  # NMS inside the model

    @property
    def input(self) -> TensorSpec:
        return self.inputs[0]

    @functools.cached_property
    def name(self) -> str:  # read for every result: made once
        return Path(self.path).name

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "name": self.name,
            "sha256": self.sha256,
            "size_bytes": self.size_bytes,
            "runtime": self.runtime,
            "task": self.task,
            "description": self.description,
            "custom_ops": self.custom_ops,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            **({"ssd_outputs": self.ssd_outputs} if self.ssd_outputs else {}),
            **({"yolo_output": asdict(self.yolo_output)} if self.yolo_output else {}),
            **({"yolo_split": asdict(self.yolo_split)} if self.yolo_split else {}),
            **({"yolo_end2end": asdict(self.yolo_end2end)} if self.yolo_end2end else {}),
        }


@dataclass
class LoadedModel:
    info: ModelInfo
    interpreter: Any
    runtime: Runtime


# --------------------------------------------------------------------------- task detection


def cpu_twin(path: str | Path) -> Path | None:
    """``foo_edgetpu.tflite`` -> ``foo.tflite`` (the uncompiled model), or None."""
    p = Path(path)
    if p.stem.endswith(EDGETPU_SUFFIX):
        return p.with_name(p.stem[: -len(EDGETPU_SUFFIX)] + p.suffix)
    return None


def edgetpu_twin(path: str | Path) -> Path:
    """``foo.tflite`` -> ``foo_edgetpu.tflite``: the name edgetpu_compiler gives the model it compiles."""
    p = Path(path)
    return p.with_name(f"{p.stem}{EDGETPU_SUFFIX}{p.suffix}")


_SSD_NAME_ROLES = {
    # TF2 object-detection API signature / tensor names
    "detection_boxes": "boxes",
    "detection_classes": "classes",
    "detection_scores": "scores",
    "num_detections": "count",
}
# pycoral's convention for TF2 exports whose signature outputs are output_0..output_3
_SSD_TF2_ORDER = {"output_0": "count", "output_1": "scores", "output_2": "classes", "output_3": "boxes"}
_SSD_TF1_SUFFIX = {"": "boxes", ":1": "classes", ":2": "scores", ":3": "count"}


def resolve_ssd_outputs(outputs: list[TensorSpec], signature_outputs: dict[str, int] | None = None) -> dict[str, int]:
    """Map the four outputs of TFLite_Detection_PostProcess to roles -> tensor index.

    TF1 exports give them as boxes, classes, scores, count (tensor names
    ``TFLite_Detection_PostProcess``, ``:1``, ``:2``, ``:3``); TF2 exports order them
    differently (often scores, boxes, count, classes) and name them in the signature
    (``detection_boxes``..., or ``output_0``=count, ``output_1``=scores, ``output_2``=classes,
    ``output_3``=boxes, as pycoral reads them). Names are tried first, then shapes:
    boxes is the only [1,N,4], count the only [1]; classes and scores are both [1,N], and
    fall back to the TF1 order between themselves.
    """
    if len(outputs) != 4:
        raise ValueError(f"an SSD detector has 4 outputs, this model has {len(outputs)}")
    indices = {t.index for t in outputs}
    if signature_outputs:
        for table in (_SSD_NAME_ROLES, _SSD_TF2_ORDER):
            roles = {table[k]: v for k, v in signature_outputs.items() if k in table}
            if len(roles) == 4 and set(roles.values()) == indices:
                return roles
    roles = {}
    for t in outputs:
        base, sep, num = t.name.partition(":")
        if base.endswith(SSD_CUSTOM_OP):
            roles[_SSD_TF1_SUFFIX.get(sep + num, "?")] = t.index
        elif t.name in _SSD_NAME_ROLES:
            roles[_SSD_NAME_ROLES[t.name]] = t.index
    if set(roles) == {"boxes", "classes", "scores", "count"}:
        return roles
    boxes = [t for t in outputs if len(t.shape) == 3 and t.shape[-1] == 4]
    count = [t for t in outputs if int(np.prod(t.shape)) == 1]
    rest = [t for t in outputs if t not in boxes and t not in count]
    if len(boxes) == 1 and len(count) == 1 and len(rest) == 2:
        return {"boxes": boxes[0].index, "classes": rest[0].index, "scores": rest[1].index, "count": count[0].index}
    raise ValueError("cannot tell the SSD outputs apart by name or shape")


def detect_task(
    outputs: list[TensorSpec],
    custom_ops: list[str],
    signature_outputs: dict[str, int] | None,
    input_shape: tuple[int, ...] | None = None,
) -> tuple[str, dict[str, int] | None]:
    """Return ("classification", None), ("detection", SSD roles) or ("detection", None) for
    YOLO-layout outputs (see :func:`edged.yolo_layout.resolve_yolo`); raise ValueError otherwise."""
    if len(outputs) == 1:
        shape = outputs[0].shape
        dims = [d for d in shape if d != 1]
        if len(dims) == 1 and len(shape) <= 2 and outputs[0].dtype in ("uint8", "int8", "float32", "float16"):
            return "classification", None
    if len(outputs) == 4 and (SSD_CUSTOM_OP in custom_ops or all(t.dtype == "float32" for t in outputs)):
        return "detection", resolve_ssd_outputs(outputs, signature_outputs)
    if resolve_yolo(outputs, input_shape) is not None:
        return "detection", None
    raise ValueError("not understood")


def _signature_outputs(interpreter: Any) -> dict[str, int] | None:
    try:
        sigs = interpreter._get_full_signature_list()
    except Exception:
        return None
    if not sigs or len(sigs) != 1:
        return None
    sig = next(iter(sigs.values()))
    return dict(sig.get("outputs", {})) or None


def _spec(detail: dict[str, Any]) -> TensorSpec:
    qp = detail.get("quantization_parameters") or {}
    scales = tuple(float(s) for s in np.atleast_1d(qp.get("scales", [])))
    zps = tuple(int(z) for z in np.atleast_1d(qp.get("zero_points", [])))
    if not scales:
        s, z = detail.get("quantization", (0.0, 0))
        scales, zps = ((float(s),), (int(z),)) if s else ((), ())
    return TensorSpec(
        index=int(detail["index"]),
        name=str(detail["name"]),
        shape=tuple(int(d) for d in detail["shape"]),
        dtype=np.dtype(detail["dtype"]).name,
        quantization=Quantization(scales, zps, int(qp.get("quantized_dimension", 0))),
    )


def _describe_outputs(outputs: list[TensorSpec]) -> str:
    return ", ".join(f"{t.name} {list(t.shape)} {t.dtype}" for t in outputs)


def read_tflite_bytes(p: Path) -> bytes:
    """The bytes of a .tflite file; a missing, unreadable or non-TFLite file is a one-line ModelError."""
    if not p.exists():
        raise ModelError(f"model file not found: {p}")
    if not p.is_file():
        raise ModelError(f"model path is not a file: {p}")
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ModelError(f"cannot read model file {p}: {exc.strerror}") from None
    if not tflite_schema.has_identifier(data):
        raise ModelError(f"{p} is not a TFLite model (no TFL3 identifier); pass a .tflite file")
    return data


def load_model(
    path: str | Path,
    runtime: str = "auto",
    num_threads: int | None = None,
    delegates: list[Any] | None = None,
) -> LoadedModel:
    """Load ``path`` into an interpreter (tensors allocated) and describe it.

    Without ``delegates`` this is the CPU path, and an Edge TPU-compiled model is refused
    up front with the name of its CPU twin.
    """
    p = Path(path)
    data = read_tflite_bytes(p)
    try:
        summary = tflite_schema.read_summary(data)
    except ValueError as exc:
        raise ModelError(f"{p} is corrupt or truncated ({exc}); copy the model again") from None
    rt = get_runtime(runtime)
    custom_ops = summary.custom_ops
    if EDGETPU_CUSTOM_OP in custom_ops and not delegates:
        raise ModelError(_edgetpu_message(p))
    with native_banners_silenced():
        interpreter = _build_interpreter(rt, p, num_threads, delegates)
    inputs = [_spec(d) for d in interpreter.get_input_details()]
    outputs = [_spec(d) for d in interpreter.get_output_details()]
    if len(inputs) != 1 or len(inputs[0].shape) != 4 or inputs[0].shape[-1] not in (1, 3):
        raise ModelError(
            f"{p}: edged needs one image input [1,H,W,3] (or [1,H,W,1]); this model has "
            + ", ".join(f"{t.name} {list(t.shape)} {t.dtype}" for t in inputs)
        )
    if inputs[0].dtype not in ("uint8", "int8", "float32"):
        raise ModelError(f"{p}: input dtype {inputs[0].dtype} is not supported (uint8, int8 or float32)")
    try:
        task, roles = detect_task(outputs, custom_ops, _signature_outputs(interpreter), inputs[0].shape)
    except ValueError:
        raise ModelError(
            f"{p}: output signature not understood ({_describe_outputs(outputs)}); edged understands "
            "classification (one [1,N] output), SSD detection (the 4 outputs of TFLite_Detection_PostProcess) "
            "and YOLO detection (one [1,4+C,N] or [1,N,4+C] output; boxes [1,N,4] or DFL [1,N,64] and "
            "scores [1,N,C] apart, told apart by shape or name; or an end-to-end [1,N,6])"
        ) from None
    yolo = resolve_yolo(outputs, inputs[0].shape) if task == "detection" and roles is None else None
    info = ModelInfo(
        path=str(p.resolve()),
        sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=len(data),
        runtime=rt.name,
        task=task,
        inputs=inputs,
        outputs=outputs,
        custom_ops=custom_ops,
        description=summary.description,
        ssd_outputs=roles,
        **_yolo_fields(yolo),
    )
    return LoadedModel(info=info, interpreter=interpreter, runtime=rt)


def _yolo_fields(yolo: YoloLayout | None) -> dict[str, Any]:
    """The ModelInfo field that holds ``yolo``, by its kind."""
    if isinstance(yolo, YoloSplitOutput):
        return {"yolo_split": yolo}
    if isinstance(yolo, YoloEnd2EndOutput):
        return {"yolo_end2end": yolo}
    return {"yolo_output": yolo}


def _build_interpreter(rt: Runtime, p: Path, num_threads: int | None, delegates: list[Any] | None) -> Any:
    try:
        interpreter = rt.interpreter_class(
            model_path=str(p), num_threads=num_threads, experimental_delegates=delegates or None
        )
        interpreter.allocate_tensors()
    except ValueError as exc:
        raise ModelError(f"{p} is corrupt or truncated ({_first_line(exc)}); copy the model again") from None
    except RuntimeError as exc:  # with a delegate, preparing happens in the constructor already
        msg = str(exc)
        m = re.search(r"unresolved custom op: ([^\s.]+)", msg)
        if m:
            op = m.group(1)
            if op == EDGETPU_CUSTOM_OP and delegates:
                raise ModelError(
                    f"{p}: model is compiled for the Edge TPU but the delegate claimed none of its nodes "
                    "(is libedgetpu built for this TF Lite version?)"
                ) from None
            if op == EDGETPU_CUSTOM_OP:
                raise ModelError(_edgetpu_message(p)) from None
            raise ModelError(
                f"{p} uses custom operator {op!r}, which the {rt.name} runtime does not provide; "
                "convert the model with builtin operators only"
            ) from None
        raise ModelError(f"{p} cannot be prepared by {rt.name}: {_first_line(exc)}") from None
    return interpreter


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _edgetpu_message(p: Path) -> str:
    twin = cpu_twin(p)
    base = f"{p} is compiled for the Edge TPU (it holds an {EDGETPU_CUSTOM_OP}) and cannot run on the CPU"
    if twin is not None and twin.is_file():
        return f"{base}; its CPU twin {twin} sits beside it: use that model (or run with an Edge TPU)"
    expected = twin or "an uncompiled .tflite"
    return f"{base}; no CPU twin found beside it (expected {expected}): use the model from before edgetpu_compiler"
