"""A detector stream's scene: its objects tracked, zones, occupancy, events and their snapshots.

The publish thread calls :meth:`StreamScene.observe` with each result before the sinks see
it: the result's objects come back tracked (``track_id``, ``zones``, ``stationary``) and
filtered (filters, masks), and a :class:`~edged.sinks.base.SceneReport` goes to every sink's
``scene()``. The best frame of each live event is kept (a reference, not a copy) until the
event's snapshot is written: when the event starts, and when it ends if a better frame came
since. :meth:`end_all` ends every event at once (detection switched off, the stream stopping).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Optional

import numpy as np

from ..draw import ZoneOverlay
from ..result import Result
from ..sinks.base import SceneReport, Snapshot

if TYPE_CHECKING:
    from ..config import StreamConfig
    from ..tracking import SceneUpdate, SnapshotStore, TrackEvent

log = logging.getLogger("edged.pipeline")
SNAPSHOT_ERROR_EVERY = 300.0  # seconds between two log lines of a snapshot that cannot be written


class StreamScene:
    def __init__(self, cfg: StreamConfig, snapshots: Optional[SnapshotStore] = None) -> None:
        from ..tracking import SceneTracker

        self.stream = cfg.id
        self.zones = dict(cfg.zones)
        self.tracker = SceneTracker(cfg.id, cfg.objects, cfg.zones, cfg.masks, cfg.events)
        self.store = snapshots if cfg.events.enabled and cfg.events.snapshots else None
        self._best: dict[str, np.ndarray] = {}  # event id -> its best frame so far
        self._saved: dict[str, float] = {}  # event id -> the best score its snapshot shows
        self._error_at = -1e9
        self.latest: Optional[SceneReport] = None

    def observe(self, result: Result, image: np.ndarray) -> SceneReport:
        update = self.tracker.update(result.objects or [], result.frame_width, result.frame_height, result.timestamp)
        result.objects = list(update.objects)
        for eid in update.best:
            self._best[eid] = image
        return self._report(update, result.timestamp)

    def overlay(self, width: int, height: int) -> list[ZoneOverlay]:
        """The zones in frame pixels with their occupancy now, for the snapshot of the live page."""
        counts = self.latest.occupancy if self.latest is not None else {}
        out = []
        for name, z in self.zones.items():
            sx, sy = (width, height) if z.fractions() else (1, 1)
            points = [(x * sx, y * sy) for x, y in z.points()]
            out.append(ZoneOverlay(name, points, int(counts.get((name, None), 0))))
        return out

    def end_all(self, timestamp: Optional[float] = None) -> SceneReport:
        return self._report(self.tracker.end_all(time.time() if timestamp is None else timestamp), timestamp)

    def _report(self, update: SceneUpdate, timestamp: Optional[float]) -> SceneReport:
        snapshot = None
        for ev in update.events:
            if ev.type in ("new", "end"):
                snapshot = self._snapshot(ev) or snapshot
            if ev.type == "end":
                self._best.pop(ev.id, None)
                self._saved.pop(ev.id, None)
        report = SceneReport(
            stream=self.stream,
            timestamp=time.time() if timestamp is None else timestamp,
            events=tuple(update.events),
            occupancy=dict(update.occupancy),
            changed=frozenset(update.changed),
            snapshot=snapshot,
        )
        self.latest = report
        return report

    def _snapshot(self, ev: TrackEvent) -> Optional[Snapshot]:
        """The event's best frame (``ev`` says its box and score) as a JPEG file, unless the one
        written already shows it."""
        image = self._best.get(ev.id)
        if self.store is None or image is None or ev.best_box is None or self._saved.get(ev.id) == ev.best_score:
            return None
        try:
            path = self.store.save(self.stream, ev.id, image, ev.best_box, ev.label, ev.best_score)
            jpeg = path.read_bytes()
        except OSError as exc:
            now = time.monotonic()
            if now - self._error_at >= SNAPSHOT_ERROR_EVERY:
                self._error_at = now
                log.error("stream %s: cannot save the snapshot of event %s: %s", self.stream, ev.id, exc)
            return None
        self._saved[ev.id] = ev.best_score
        return Snapshot(ev.id, ev.label, str(path), jpeg)
