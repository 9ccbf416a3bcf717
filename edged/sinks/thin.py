"""Thinning: which results of a stream a sink passes on when not every one is wanted.

A result's *labels* are those of its classes (classification) or objects (detection) that
score at least ``min_score`` (unset: every one in the result, i.e. those above the model's
threshold, within its top_k). Its *scene* is what on-change compares:

- classification: the set of its labels;
- detection: each of its labels with its count (two people and a car differ from one person
  and a car); boxes and scores do not count.

Rules (``admit(result, now)`` says whether to publish; ``now`` is a monotonic time in seconds):

- ``on_change``: publish a result whose scene differs from that of the last result
  *published* (so a change held back by the rate limit is published once it may be).
- ``max_per_second`` N: publish a result only if each of its labels was last published at
  least 1/N s ago; a result without labels counts as the one label "nothing". A label new
  to the scene is published at once if the others in its result are due, else within 1/N s
  while it stays.
- both: a result must pass both.
- ``heartbeat_seconds`` K (0: never): whatever the rules say, publish when nothing was
  published for K seconds, so a static scene still gets a message every K seconds.

The first result is always published. Pure logic, no I/O, one instance per stream (not
thread-safe: the stream's inference thread calls it).
"""

from __future__ import annotations

import collections
from typing import Dict, Optional, Tuple

from pydantic import Field, model_validator

from ..registry import StrictConfig
from ..result import Result

NOTHING = ""  # the label of a result without labels, for the rate limit
Scene = Tuple[Tuple[str, int], ...]


class MqttThinConfig(StrictConfig):
    """Publish fewer results of a stream: on a change of its labels and/or at most N a second per label."""

    on_change: bool = Field(
        False,
        description="publish a result only when its labels differ from the last published one's "
        "(classification: the set of labels; detection: each label with its count)",
    )
    max_per_second: Optional[float] = Field(
        None, gt=0, le=1000, description="at most this many results a second with any one label"
    )
    min_score: Optional[float] = Field(
        None, ge=0, le=1, description="labels scoring below this do not count (default: every label in the result)"
    )
    heartbeat_seconds: float = Field(
        60.0, ge=0, description="publish a result anyway when none was published for this long (0: never)"
    )

    @model_validator(mode="after")
    def _a_rule(self) -> MqttThinConfig:
        if not self.on_change and self.max_per_second is None:
            raise ValueError("set on_change: true and/or max_per_second (or leave thin: out)")
        return self


class Thinner:
    def __init__(
        self,
        on_change: bool = False,
        max_per_second: Optional[float] = None,
        heartbeat_seconds: float = 0.0,
        min_score: Optional[float] = None,
    ) -> None:
        if not on_change and not max_per_second:
            raise ValueError("thinning needs on_change and/or max_per_second")
        if max_per_second is not None and max_per_second <= 0:
            raise ValueError("max_per_second must be > 0")
        self.on_change = on_change
        self.interval = 1.0 / max_per_second if max_per_second else None
        self.heartbeat = heartbeat_seconds if heartbeat_seconds and heartbeat_seconds > 0 else None
        self.min_score = min_score
        self._last_scene: Optional[Scene] = None
        self._last_any: Optional[float] = None
        self._last_label: Dict[str, float] = {}
        self.passed = self.thinned = 0

    @classmethod
    def from_config(cls, cfg: MqttThinConfig) -> Thinner:
        return cls(
            on_change=cfg.on_change,
            max_per_second=cfg.max_per_second,
            heartbeat_seconds=cfg.heartbeat_seconds,
            min_score=cfg.min_score,
        )

    def scene(self, result: Result) -> Scene:
        items = (result.classes if result.task == "classification" else result.objects) or []
        labels = [i.label for i in items if self.min_score is None or i.score >= self.min_score]
        if result.task == "classification":
            return tuple((label, 1) for label in sorted(set(labels)))
        return tuple(sorted(collections.Counter(labels).items()))

    def admit(self, result: Result, now: float) -> bool:
        scene = self.scene(result)
        labels = [label for label, _ in scene] or [NOTHING]
        if self._last_any is not None and not (self.heartbeat and now - self._last_any >= self.heartbeat):
            ok = not (self.on_change and scene == self._last_scene)
            if ok and self.interval is not None:
                never = -float("inf")
                ok = all(now - self._last_label.get(label, never) >= self.interval - 1e-9 for label in labels)
            if not ok:
                self.thinned += 1
                return False
        self._last_scene = scene
        self._last_any = now
        for label in labels:
            self._last_label[label] = now
        self.passed += 1
        return True
