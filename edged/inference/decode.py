"""A model's outputs to the classes or objects of a result.

The decoder is chosen once, when the model loads (:func:`decoder_for`): a classifier's
top-k, an SSD's boxes (TFLite_Detection_PostProcess) or an Ultralytics YOLO head with its
NMS. Each is a thin adapter over the pure functions of :mod:`edged.postprocess`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional, Protocol

import numpy as np

from .. import postprocess
from ..model import ModelInfo
from ..preprocess import Transform
from ..result import Class, Object

if TYPE_CHECKING:
    from ..config import ModelConfig

DEFAULT_THRESHOLD = {"classification": 0.1, "detection": 0.5}

Outputs = Callable[[int], np.ndarray]  # output tensor index -> its values


@dataclass(frozen=True)
class Decoded:
    classes: Optional[list[Class]] = None
    objects: Optional[list[Object]] = None


class Decoder(Protocol):
    def __call__(self, output: Outputs, transform: Transform) -> Decoded:
        """Decode the outputs of one inference (``transform`` maps input pixels to the frame)."""


@dataclass(frozen=True)
class ClassifyDecoder:
    index: int
    scale: float
    zero_point: int
    top_k: int
    threshold: float
    labels: Optional[dict[int, str]]

    def __call__(self, output: Outputs, transform: Transform) -> Decoded:
        classes = postprocess.classify_quantized(
            output(self.index), self.scale, self.zero_point, self.top_k, self.threshold, self.labels
        )
        return Decoded(classes=classes)


@dataclass(frozen=True)
class SsdDecoder:
    roles: dict[str, int]  # boxes, classes, scores, count -> output index
    input_width: int
    input_height: int
    threshold: float
    top_k: Optional[int]
    labels: Optional[dict[int, str]]

    def __call__(self, output: Outputs, transform: Transform) -> Decoded:
        r = self.roles
        objects = postprocess.detect(
            output(r["boxes"]), output(r["classes"]), output(r["scores"]), output(r["count"]),
            transform, self.input_width, self.input_height, self.threshold, self.labels, top_k=self.top_k,
        )  # fmt: skip
        return Decoded(objects=objects)


@dataclass(frozen=True)
class YoloDecoder:
    index: int
    channels_first: bool
    scale: float
    zero_point: int
    input_width: int
    input_height: int
    threshold: float
    iou_threshold: float
    max_detections: int
    box_format: str
    top_k: Optional[int]
    labels: Optional[dict[int, str]]

    def __call__(self, output: Outputs, transform: Transform) -> Decoded:
        objects = postprocess.detect_yolo(
            output(self.index), transform, self.input_width, self.input_height,
            channels_first=self.channels_first, scale=self.scale, zero_point=self.zero_point,
            threshold=self.threshold, iou_threshold=self.iou_threshold, max_detections=self.max_detections,
            box_format=self.box_format, labels=self.labels, top_k=self.top_k,
        )  # fmt: skip
        return Decoded(objects=objects)


DEFAULT_TOP_K = 3  # classes a classification result keeps unless top_k says otherwise


def q_size(info: ModelInfo) -> int:
    """The number of classes of a classifier's output."""
    n = 1
    for d in info.outputs[0].shape:
        n *= int(d)
    return max(1, n)


def decoder_for(info: ModelInfo, cfg: ModelConfig, labels: Optional[dict[int, str]]) -> Decoder:
    """The decoder of a model's task and output layout, with the configuration's threshold and caps."""
    threshold = cfg.threshold if cfg.threshold is not None else DEFAULT_THRESHOLD[info.task]
    _, h, w, _ = info.input.shape
    if info.task == "classification":
        q = info.outputs[0].quantization
        k = DEFAULT_TOP_K if cfg.top_k is None else (cfg.top_k or q_size(info))  # 0: every class above threshold
        return ClassifyDecoder(info.outputs[0].index, q.scale, q.zero_point, k, threshold, labels)
    # a detector keeps every object above the threshold, up to max_detections, unless top_k caps it
    top_k = min(cfg.top_k, cfg.max_detections) if cfg.top_k else cfg.max_detections
    yolo = info.yolo_output
    if yolo is not None:
        q = next(t for t in info.outputs if t.index == yolo.index).quantization
        return YoloDecoder(
            yolo.index, yolo.channels_first, q.scale, q.zero_point, w, h, threshold,
            cfg.iou_threshold, cfg.max_detections, cfg.yolo_boxes, top_k, labels,
        )  # fmt: skip
    return SsdDecoder(dict(info.ssd_outputs or {}), w, h, threshold, top_k, labels)
