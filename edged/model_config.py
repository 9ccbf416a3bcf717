"""The sections of a configuration that a one-shot command needs alone: the model's
(:class:`ModelConfig`) and the Edge TPU's (:class:`EdgeTpuConfig`), and the one-line
validation errors. :mod:`edged.config` holds the rest and re-exports these; this module
registers no source or sink kind and imports none of their implementations, so that
``edged infer`` validates its options without importing the daemon's parts.
"""

from __future__ import annotations

from typing import Any, Dict, List, Literal, Optional, Union

from pydantic import Field, ValidationError, field_validator

from .errors import ConfigError
from .registry import SINKS, SOURCES, StrictConfig


class ModelConfig(StrictConfig):
    path: str = Field(description=".tflite model file")
    labels: Optional[str] = Field(None, description="labels file: one label a line, or 'ID label' pairs")
    runtime: Literal["auto", "ai_edge_litert", "tflite_runtime", "tensorflow"] = Field(
        "auto", description="TFLite interpreter package; auto prefers ai_edge_litert (fastest on the CPU)"
    )
    threads: Optional[int] = Field(
        None, ge=1, le=64, description="CPU threads for the interpreter (default: all cores)"
    )
    top_k: Optional[int] = Field(
        None,
        ge=0,
        le=10000,
        description="classification: classes kept per result (default 3; 0: every class above the threshold); "
        "detection: objects kept, at most (default: every object above the threshold, up to max_detections)",
    )
    threshold: Optional[float] = Field(
        None, ge=0, le=1, description="minimum score kept (default 0.1 for classification, 0.5 for detection)"
    )
    resize: Literal["stretch", "letterbox"] = Field("stretch", description="fill the input, or keep the aspect ratio")
    interpolation: Literal["linear", "nearest", "area"] = "linear"
    mean: Optional[Union[float, List[float]]] = Field(
        None, description="normalisation mean (pixels); unset: feed raw pixels"
    )
    std: Optional[Union[float, List[float]]] = Field(
        None, description="normalisation std (pixels); unset: feed raw pixels"
    )
    iou_threshold: float = Field(
        0.45, ge=0, le=1, description="YOLO detectors: NMS drops a box overlapping a better one of its class by more"
    )
    max_detections: int = Field(
        300, ge=1, le=10000, description="detectors: at most this many objects per result (YOLO: leave NMS)"
    )
    yolo_boxes: Literal["auto", "normalized", "pixels"] = Field(
        "auto", description="YOLO detectors: box units; auto tells normalised from input-pixel boxes per frame"
    )

    accelerator: Literal["auto", "edgetpu", "cpu"] = Field(
        "auto",
        description="auto: the Edge TPU when the model is compiled for it and the delegate loads, else the CPU "
        "twin (one warning); edgetpu: the Edge TPU or a start-up error; cpu: never the Edge TPU",
    )
    device: Optional[str] = Field(
        None, description="Edge TPU selector: usb, usb:N, pci, pci:N, :N (unset: spread over the TPUs found)"
    )
    cpu_model: Optional[str] = Field(
        None, description="the CPU twin of an Edge TPU model (default: the same name without _edgetpu beside it)"
    )

    @field_validator("device")
    @classmethod
    def _selector(cls, v: Optional[str]) -> Optional[str]:
        if v:
            from .edgetpu import parse_selector

            try:
                parse_selector(v)
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
        return v or None

    @field_validator("std")
    @classmethod
    def _std_nonzero(cls, v: Any) -> Any:
        vals = v if isinstance(v, list) else [v]
        if v is not None and any(x == 0 for x in vals):
            raise ValueError("std must not be 0")
        return v


class EdgeTpuConfig(StrictConfig):
    """How edged loads and supervises the Edge TPU delegate (libedgetpu)."""

    library: Optional[str] = Field(
        None, description="delegate library (default: libedgetpu.so.1, libedgetpu.1.dylib or edgetpu.dll)"
    )
    options: Dict[str, Union[str, int, float]] = Field(
        default_factory=dict, description="options passed to the delegate, e.g. {Performance: max}"
    )
    runtime: Literal["auto", "ai_edge_litert", "tflite_runtime", "tensorflow"] = Field(
        "auto", description="interpreter package in the worker; auto prefers tflite_runtime (libedgetpu's ABI)"
    )
    deadline_seconds: float = Field(1.0, gt=0, le=60, description="no result within this = a hung TPU")
    probe_initial_seconds: float = Field(1.0, gt=0, description="first wait before probing a failed TPU again")
    probe_max_seconds: float = Field(60.0, gt=0, description="longest wait between two probes")
    stable_seconds: float = Field(
        30.0,
        ge=0,
        description="a worker that fails again sooner after a restart is flapping: the probe wait goes on "
        "doubling instead of starting again from probe_initial_seconds (0: no damping)",
    )


def format_validation_errors(exc: ValidationError, prefix: str = "") -> str:
    """One line: ``key.path: message; ...`` (``prefix`` and dashes for command-line options)."""
    union_tags = frozenset(SOURCES.tags() + SINKS.tags())  # the members of the unions, named in error locations
    parts = []
    for err in exc.errors():
        loc = ""
        for item in err["loc"]:
            if isinstance(item, int):
                loc += f"[{item}]"
            elif item in union_tags and loc.endswith(("source", "]")):
                continue  # the union member pydantic tried; the type key says it already
            else:
                loc += ("." if loc else "") + str(item)
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "union_tag_invalid":
            msg = f"unknown type {err.get('input', {}).get('type')!r}" if isinstance(err.get("input"), dict) else msg
        if prefix and loc:
            loc = prefix + loc.replace("_", "-")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)
