"""A model's outputs to the classes or objects of a result.

The decoder is chosen once, when the model loads (:func:`decoder_for`): a classifier's
top-k, an SSD's boxes (TFLite_Detection_PostProcess), a YOLO head (one tensor, or split in
two, its boxes as centre and size or as DFL bins) with its NMS, or an end-to-end YOLO export.
Each is a thin adapter over the pure functions of :mod:`edged.postprocess` and :mod:`edged.yolo`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional, Protocol

import numpy as np

from .. import postprocess, yolo
from ..model import ModelInfo, TensorSpec
from ..preprocess import Transform
from ..result import Class, Object
from ..yolo_layout import YoloSplitOutput

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
    """A single-tensor head ``[1, 4 + C, N]`` (or channels last)."""

    index: int
    channels_first: bool
    quant: tuple[float, int]
    input_size: tuple[int, int]  # width, height
    options: postprocess.YoloOptions

    def __call__(self, output: Outputs, transform: Transform) -> Decoded:
        scale, zero_point = self.quant
        objects = postprocess.detect_yolo(
            output(self.index), transform, *self.input_size, channels_first=self.channels_first,
            scale=scale, zero_point=zero_point, options=self.options,
        )  # fmt: skip
        return Decoded(objects=objects)


@dataclass(frozen=True)
class YoloSplitDecoder:
    """A split head: its box and score tensors (``layout``), each with its own quantisation."""

    layout: YoloSplitOutput
    box_quant: tuple[float, int]
    score_quant: tuple[float, int]
    input_size: tuple[int, int]
    options: postprocess.YoloOptions

    def __call__(self, output: Outputs, transform: Transform) -> Decoded:
        lay = self.layout
        decode = yolo.detect_yolo_dfl if lay.box_encoding == "dfl" else yolo.detect_yolo_split
        objects = decode(
            output(lay.boxes), output(lay.scores), transform, *self.input_size,
            boxes_channels_first=lay.boxes_channels_first, scores_channels_first=lay.scores_channels_first,
            box_quant=self.box_quant, score_quant=self.score_quant, options=self.options,
        )  # fmt: skip
        return Decoded(objects=objects)


@dataclass(frozen=True)
class YoloEnd2EndDecoder:
    """An end-to-end export ``[1, N, 6]`` (NMS inside the model)."""

    index: int
    quant: tuple[float, int]
    input_size: tuple[int, int]
    options: postprocess.YoloOptions

    def __call__(self, output: Outputs, transform: Transform) -> Decoded:
        scale, zero_point = self.quant
        objects = yolo.detect_yolo_end2end(
            output(self.index), transform, *self.input_size, scale=scale, zero_point=zero_point, options=self.options
        )
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
    options = postprocess.YoloOptions(threshold, cfg.iou_threshold, cfg.max_detections, cfg.yolo_boxes, labels, top_k)
    head, split, e2e = info.yolo_output, info.yolo_split, info.yolo_end2end
    if head is not None:
        return YoloDecoder(head.index, head.channels_first, _quant(info, head.index), (w, h), options)
    if split is not None:
        return YoloSplitDecoder(split, _quant(info, split.boxes), _quant(info, split.scores), (w, h), options)
    if e2e is not None:
        return YoloEnd2EndDecoder(e2e.index, _quant(info, e2e.index), (w, h), options)
    return SsdDecoder(dict(info.ssd_outputs or {}), w, h, threshold, top_k, labels)


def _quant(info: ModelInfo, index: int) -> tuple[float, int]:
    """(scale, zero point) of output tensor ``index``; scale 0 for a float tensor."""
    spec: TensorSpec = next(t for t in info.outputs if t.index == index)
    return spec.quantization.scale, spec.quantization.zero_point
