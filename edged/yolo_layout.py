"""Which YOLO layout a model's outputs are: one head tensor, a split head, or an end-to-end export.

Read from the output shapes when the model loads (:func:`resolve_yolo`); tensor names only
break a tie between two split-head readings. docs/detectors.md states the rules.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Union

if TYPE_CHECKING:
    from .model import TensorSpec

DTYPES = ("uint8", "int8", "float32")
END2END_WIDTH = 6  # x0, y0, x1, y1, score, class
DFL_BINS = 16  # Ultralytics' reg_max: a DFL box is 4 sides x 16 bins
BOX_ENCODINGS = {4: "xywh", 4 * DFL_BINS: "dfl"}  # box side -> encoding
_BOX_NAMES = ("box", "bbox", "coord", "reg", "loc")
_SCORE_NAMES = ("score", "cls", "class", "conf", "prob")


@dataclass(frozen=True)
class YoloOutput:
    """The one output of an Ultralytics YOLO (v8/v11) export: ``[1, 4 + C, N]`` or ``[1, N, 4 + C]``."""

    index: int
    channels_first: bool  # True: [1, 4 + C, N] (Ultralytics' layout); False: [1, N, 4 + C]
    classes: int  # C
    anchors: int  # N


@dataclass(frozen=True)
class YoloSplitOutput:
    """A YOLO head exported as two tensors, each with its own quantisation: boxes ``[1, N, 4]``
    or ``[1, 4, N]`` (``xywh``; or ``[1, N, 64]`` / ``[1, 64, N]``, ``dfl``: 16 bins per side,
    as Frigate's Edge TPU YOLO exports give them) and class scores ``[1, N, C]`` or ``[1, C, N]``
    (probabilities; logits with ``dfl`` boxes). ``extra`` is a third output ``[1, N, 1]`` (a
    max-score tensor such exports may add), read by nothing."""

    boxes: int  # tensor index of the boxes
    scores: int  # tensor index of the class scores
    boxes_channels_first: bool  # True: [1, 4, N] (or [1, 64, N])
    scores_channels_first: bool  # True: [1, C, N]
    classes: int  # C
    anchors: int  # N
    box_encoding: str = "xywh"  # "xywh": centre x, centre y, width, height; "dfl": distribution bins
    extra: int | None = None  # index of the unused [1, N, 1] output of a 3-output export


@dataclass(frozen=True)
class YoloEnd2EndOutput:
    """An end-to-end export, NMS inside the model: ``[1, N, 6]``, rows x0, y0, x1, y1, score, class."""

    index: int
    detections: int  # N: the rows, the export's max_det


YoloLayout = Union[YoloOutput, YoloSplitOutput, YoloEnd2EndOutput]


def yolo_anchor_count(height: int, width: int, strides: tuple[int, ...] = (8, 16, 32)) -> int:
    """How many anchors (grid cells) a YOLO head over ``strides`` has for an input of this size."""
    return sum(-(-height // s) * -(-width // s) for s in strides)


def _anchors_for(input_shape: tuple[int, ...] | None) -> int:
    """The anchor count of a stride 8/16/32 head for the input ``[1, H, W, C]``; -1 when unknown."""
    return yolo_anchor_count(input_shape[1], input_shape[2]) if input_shape and len(input_shape) == 4 else -1


def _head_tensor(t: TensorSpec) -> bool:
    return len(t.shape) == 3 and t.shape[0] == 1 and t.dtype in DTYPES and min(t.shape[1:]) >= 1


def resolve_yolo(outputs: list[TensorSpec], input_shape: tuple[int, ...] | None = None) -> YoloLayout | None:
    """The YOLO layout of a model's outputs, or None: an end-to-end export, a single head
    tensor (:func:`resolve_yolo_output`) or a split head (:func:`resolve_yolo_split`)."""
    if len(outputs) == 1:
        return resolve_yolo_end2end(outputs, input_shape) or resolve_yolo_output(outputs, input_shape)
    if len(outputs) in (2, 3):
        return resolve_yolo_split(outputs, input_shape)
    return None


def resolve_yolo_end2end(
    outputs: list[TensorSpec], input_shape: tuple[int, ...] | None = None
) -> YoloEnd2EndOutput | None:
    """One output ``[1, N, 6]`` whose N is not the anchor count of a stride 8/16/32 head for the
    input size: an end-to-end export (N is its max_det, 300 by default). When N is the anchor
    count, the output is a single head tensor ``[1, N, 4 + C]`` with 2 classes instead."""
    if len(outputs) != 1 or not _head_tensor(outputs[0]):
        return None
    t = outputs[0]
    if t.shape[2] != END2END_WIDTH or t.shape[1] == _anchors_for(input_shape):
        return None
    return YoloEnd2EndOutput(index=t.index, detections=t.shape[1])


def resolve_yolo_output(outputs: list[TensorSpec], input_shape: tuple[int, ...] | None = None) -> YoloOutput | None:
    """The single-tensor YOLO layout of a model's outputs, or None.

    One output ``[1, A, B]`` (uint8, int8 or float32) whose smaller side is at least 5 (4 box
    rows and a class) is read as YOLO, unless it is an end-to-end export
    (:func:`resolve_yolo_end2end`). Which side holds the anchors: the one equal to the anchor
    count of a stride 8/16/32 head for the input size when exactly one is; else the longer
    side (a detector has more anchors than classes); a square output is ``[1, 4 + C, N]``,
    Ultralytics' own layout.
    """
    if len(outputs) != 1 or not _head_tensor(outputs[0]) or resolve_yolo_end2end(outputs, input_shape):
        return None
    t = outputs[0]
    a, b = t.shape[1], t.shape[2]
    if min(a, b) < 5:
        return None
    n = _anchors_for(input_shape)
    channels_first = b == n if (a == n) != (b == n) else b >= a
    width, anchors = (a, b) if channels_first else (b, a)
    return YoloOutput(index=t.index, channels_first=channels_first, classes=width - 4, anchors=anchors)


def _split_readings(boxes: TensorSpec, scores: TensorSpec, anchors: int) -> list[YoloSplitOutput]:
    """Every way ``boxes`` can be ``[1, 4, N]`` / ``[1, N, 4]`` (or a DFL ``[1, 64, N]`` /
    ``[1, N, 64]``, whose N must be ``anchors``) with ``scores`` ``[1, C, N]`` / ``[1, N, C]``."""
    out = []
    for box_cf in (True, False):
        side, n = boxes.shape[1:] if box_cf else boxes.shape[:0:-1]
        encoding = BOX_ENCODINGS.get(side)
        if encoding is None or (encoding == "dfl" and n != anchors):
            continue
        for score_cf in (True, False):
            c, m = scores.shape[1:] if score_cf else scores.shape[:0:-1]
            if m == n:
                out.append(YoloSplitOutput(boxes.index, scores.index, box_cf, score_cf, c, n, encoding))
    return out


def _named(t: TensorSpec, words: tuple[str, ...]) -> bool:
    name = t.name.lower()
    return any(w in name for w in words)


def resolve_yolo_split(outputs: list[TensorSpec], input_shape: tuple[int, ...] | None = None) -> YoloSplitOutput | None:
    """A split YOLO head of two outputs (or three, one of them ``[1, N, 1]``: ignored), or None.

    Both outputs are ``[1, A, B]`` (uint8, int8 or float32); one is the boxes, with a side of 4
    (or 64, DFL bins, when the other side is the anchor count of the input), the other the class
    scores; they share the anchor side N. Of the readings the shapes allow,
    those whose N is the anchor count of a stride 8/16/32 head for the input size are preferred;
    then channels-last scores (``[1, N, C]``, as Frigate's Edge TPU exports give them) over
    channels-first for a square score tensor; a reading left ambiguous is settled by the tensor
    names (``box``... against ``score``/``cls``...), else the layout is not understood.
    """
    if len(outputs) not in (2, 3) or not all(_head_tensor(t) for t in outputs):
        return None
    extra = [t for t in outputs if 1 in t.shape[1:]] if len(outputs) == 3 else []
    if len(outputs) == 3 and len(extra) != 1:
        return None
    a, b = [t for t in outputs if t not in extra]
    n = _anchors_for(input_shape)
    readings = _split_readings(a, b, n) + _split_readings(b, a, n)
    if extra:
        readings = [replace(r, extra=extra[0].index) for r in readings if r.anchors in extra[0].shape]
    if any(r.anchors == n for r in readings):
        readings = [r for r in readings if r.anchors == n]
    # one tensor pair, both score orientations possible (a square score tensor): [1, N, C]
    pairs = {(r.boxes, r.boxes_channels_first) for r in readings}
    if len(pairs) == 1 and len(readings) == 2:
        readings = [r for r in readings if not r.scores_channels_first]
    if len({r.boxes for r in readings}) > 1:
        by_name = {t.index for t in outputs if _named(t, _BOX_NAMES) and not _named(t, _SCORE_NAMES)}
        readings = [r for r in readings if r.boxes in by_name]
    return readings[0] if len(readings) == 1 else None


def layout_text(info: dict[str, Any]) -> str:
    """How `edged inspect` names the YOLO layout of a model ("" for none), from ModelInfo.to_dict()."""
    if "yolo_output" in info:
        y = info["yolo_output"]
        shape = f"[1, {4 + y['classes']}, N]" if y["channels_first"] else f"[1, N, {4 + y['classes']}]"
        return f" (YOLO, one head tensor #{y['index']} {shape}: {y['classes']} classes, {y['anchors']} anchors)"
    if "yolo_split" in info:
        y = info["yolo_split"]
        dfl = ", DFL boxes" if y["box_encoding"] == "dfl" else ""
        extra = f", #{y['extra']} unused" if y.get("extra") is not None else ""
        return (
            f" (YOLO, split head: boxes #{y['boxes']}, scores #{y['scores']}{dfl}{extra}: "
            f"{y['classes']} classes, {y['anchors']} anchors)"
        )
    if "yolo_end2end" in info:
        y = info["yolo_end2end"]
        return f" (YOLO end-to-end, NMS in the model: #{y['index']} [1, {y['detections']}, 6])"
    return ""
