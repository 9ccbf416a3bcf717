"""The events of tracked objects: ``new`` when a track is confirmed, ``update`` when its zones,
the zones it entered or its stationary flag change, or its best score improves (that alone at
most once per ``update_interval_seconds``), ``end`` when the track is lost."""

from __future__ import annotations

import secrets
import string
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

from ..result import Box

NEW, UPDATE, END = "new", "update", "end"
_ALPHABET = string.ascii_lowercase + string.digits


def new_event_id(start: float) -> str:
    """An id unique across restarts: the start time and 6 random characters."""
    return f"{start:.6f}-" + "".join(secrets.choice(_ALPHABET) for _ in range(6))


@dataclass(frozen=True)
class TrackEvent:
    """One event of one tracked object (every field is its state when the event was sent)."""

    id: str
    type: str  # new | update | end
    stream: str
    label: str
    track_id: int
    start: float  # the frame that confirmed the track, Unix seconds
    end: Optional[float]  # when the object was last seen (end events only)
    score: float  # the latest detection's
    best_score: float
    best_box: Box
    best_time: float  # the timestamp of the best frame
    zones: Tuple[str, ...]  # the zones it is counted in now
    entered_zones: Tuple[str, ...]  # every zone it entered, in order
    stationary: bool
    frames: int  # frames it was detected in

    def to_dict(self) -> Dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "stream": self.stream,
            "label": self.label,
            "track_id": self.track_id,
            "start": round(self.start, 6),
            "end": None if self.end is None else round(self.end, 6),
            "score": self.score,
            "best_score": self.best_score,
            "best_box": self.best_box.to_dict(),
            "best_time": round(self.best_time, 6),
            "zones": list(self.zones),
            "entered_zones": list(self.entered_zones),
            "stationary": self.stationary,
            "frames": self.frames,
        }


class EventState:
    """The event of one confirmed track, from its ``new`` to its ``end`` (mutable; each event
    sent is a frozen copy)."""

    def __init__(self, stream: str, label: str, track_id: int, now: float, interval: float) -> None:
        self.id, self.stream, self.label, self.track_id, self.start = new_event_id(now), stream, label, track_id, now
        self.interval = interval
        self.score, self.best_score, self.best_box, self.best_time = 0.0, -1.0, Box(0, 0, 0, 0), now
        self.zones: Tuple[str, ...] = ()
        self.entered: Tuple[str, ...] = ()
        self.stationary = False
        self.frames = 0
        self.last_seen = now
        self._last_sent = now
        self._score_pending = False
        self._started = False

    def frame(
        self, now: float, seen: Optional[Tuple[float, Box]], zones: Tuple[str, ...], stationary: bool, frames: int
    ) -> Tuple[Optional[TrackEvent], bool]:
        """One frame of the track (``seen``: its detection's score and box, None when missed);
        returns the event to send (or None) and whether this frame is its best so far."""
        changed = zones != self.zones or stationary != self.stationary
        if changed:
            self.entered += tuple(z for z in zones if z not in self.entered)
        self.zones, self.stationary, self.frames = zones, stationary, frames
        best = False
        if seen is not None:
            self.last_seen = now
            self.score = seen[0]
            if seen[0] > self.best_score:
                best = self._score_pending = True
                self.best_score, self.best_box, self.best_time = seen[0], seen[1], now
        if not self._started:
            self._started = True
            return self._send(NEW, now), best
        if changed or (self._score_pending and now - self._last_sent >= self.interval):
            return self._send(UPDATE, now), best
        return None, best

    def _send(self, kind: str, now: float) -> TrackEvent:
        self._last_sent = now
        self._score_pending = False
        return self._event(kind, None)

    def _event(self, kind: str, end: Optional[float]) -> TrackEvent:
        return TrackEvent(
            self.id, kind, self.stream, self.label, self.track_id, self.start, end, self.score, self.best_score,
            self.best_box, self.best_time, self.zones, self.entered, self.stationary, self.frames,
        )  # fmt: skip

    def end(self, end: float) -> TrackEvent:
        """The ``end`` event: the object was last seen at ``end``."""
        return self._event(END, end)
