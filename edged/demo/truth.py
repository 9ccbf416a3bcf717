"""Judging results against what the synthetic scene drew: the ``truth`` annotation.

The synthetic source attaches ``{"truth": {"label": "7"}}`` (one digit, for a classifier)
or ``{"truth": {"objects": [{"label", "box"}, ...]}}`` (1 to 4 digits, for a detector) to
each frame. :class:`TruthScorer`, registered with the log sink for the ``truth`` key, keeps
a classifier's running accuracy (top class = the drawn digit) and a detector's running
precision and recall (:func:`match_truth`), and ends each log line with them.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

from ..result import Box, Object, Result
from ..sinks.log import ScoreNote, register_scorer

TRUTH_IOU = 0.5  # a detection is right when it overlaps a drawn digit of its label by at least this


def read_box(item: Mapping[str, Any]) -> Box:
    """The box of a drawn digit (an annotation: a mapping, as the scene drew it)."""
    b = item["box"]
    return Box(b["xmin"], b["ymin"], b["xmax"], b["ymax"])


def match_truth(objects: Sequence[Object], truth: Sequence[Mapping[str, Any]], iou_min: float = TRUTH_IOU) -> int:
    """How many of ``objects`` are true positives: taken best score first, a detection matches
    the unmatched truth box of the same label that it overlaps most, at IoU >= ``iou_min``
    (each truth box matches at most one detection; the others are false positives)."""
    used = [False] * len(truth)
    truth_boxes = [read_box(t) for t in truth]
    tp = 0
    for o in sorted(objects, key=lambda o: -o.score):
        best, bi = iou_min, -1
        for j, t in enumerate(truth):
            if not used[j] and str(t["label"]) == o.label:
                v = o.box.iou(truth_boxes[j])
                if v >= best:
                    best, bi = v, j
        if bi >= 0:
            used[bi] = True
            tp += 1
    return tp


class DetectionTally:
    """Running precision and recall of detections against the boxes a synthetic source drew."""

    def __init__(self) -> None:
        self.frames = self.tp = self.detections = self.truths = 0

    def add(self, objects: Sequence[Object], truth: Sequence[Mapping[str, Any]]) -> None:
        self.frames += 1
        self.tp += match_truth(objects, truth)
        self.detections += len(objects)
        self.truths += len(truth)

    @property
    def precision(self) -> float:
        return self.tp / self.detections if self.detections else 1.0

    @property
    def recall(self) -> float:
        return self.tp / self.truths if self.truths else 1.0


def _drawn_objects(truth: object, result: Result) -> Optional[Sequence[Mapping[str, Any]]]:
    """The drawn digits when both the scene drew boxes and the model detects objects, else None."""
    objects = truth.get("objects") if isinstance(truth, Mapping) else None
    return objects if objects is not None and result.objects is not None else None


def _label(truth: object) -> object:
    return truth.get("label") if isinstance(truth, Mapping) else truth


class TruthScorer:
    """The log sink's scorer of the ``truth`` annotation (an :class:`~edged.sinks.log.AnnotationScorer`)."""

    def __init__(self) -> None:
        self.tally = DetectionTally()
        self.hits = 0
        self.seen = 0

    def add(self, value: object, result: Result) -> None:
        drawn = _drawn_objects(value, result)
        if drawn is not None:
            self.tally.add(result.objects or [], drawn or [])
        elif result.classes is not None:
            self.seen += 1
            if result.classes and result.classes[0].label == _label(value):
                self.hits += 1

    def note(self, value: object, result: Result) -> Optional[ScoreNote]:
        drawn = _drawn_objects(value, result)
        if drawn is not None:
            t, n_truth = self.tally, len(drawn or [])
            return ScoreNote(
                f" | truth {n_truth} digit{'' if n_truth == 1 else 's'}, precision {t.precision:.1%}"
                f" recall {t.recall:.1%}"
                f" over {t.frames} frames",
                boxes=True,
            )
        if self.seen:
            return ScoreNote(f" | truth {_label(value)}, running accuracy {self.hits / self.seen:.1%} of {self.seen}")
        return None


register_scorer("truth", TruthScorer)
