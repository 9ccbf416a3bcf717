"""A detector stream's scene: its objects tracked, zones, occupancy, events and their snapshots.

The publish thread calls :meth:`StreamScene.observe` with each result before the sinks see
it: the result's objects come back tracked (``track_id``, ``zones``, ``stationary``) and
filtered (filters, masks), and a :class:`~edged.sinks.base.SceneReport` goes to every sink's
``scene()``. The best frame of each live event is kept (a reference, not a copy) until the
event's snapshot is written (by :class:`~.snapshots.SnapshotWriter`, off the publish thread):
when the event starts, and when it ends if a better frame came since. :meth:`end_all` ends
every event at once (detection switched off, the stream stopping).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Optional

import numpy as np

from ..draw import ZoneOverlay
from ..result import Result
from ..sinks.base import SceneReport

if TYPE_CHECKING:
    from ..config import StreamConfig
    from ..tracking import SceneUpdate, SnapshotStore, TrackEvent

log = logging.getLogger("edged.pipeline")


class StreamScene:
    def __init__(self, cfg: StreamConfig, snapshots: Optional[SnapshotStore] = None) -> None:
        from ..tracking import SceneTracker
        from .snapshots import SnapshotWriter

        self.stream = cfg.id
        self.zones = dict(cfg.zones)
        self.tracker = SceneTracker(cfg.id, cfg.objects, cfg.zones, cfg.masks, cfg.events)
        store = snapshots if cfg.events.enabled and cfg.events.snapshots else None
        self.writer = SnapshotWriter(cfg.id, store) if store is not None else None
        self._best: dict[str, np.ndarray] = {}  # event id -> its best frame so far
        self._saved: dict[str, float] = {}  # event id -> the best score its snapshot shows
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
        for ev in update.events:
            if ev.type in ("new", "end"):
                self._snapshot(ev)
            if ev.type == "end":
                self._best.pop(ev.id, None)
                self._saved.pop(ev.id, None)
        report = SceneReport(
            stream=self.stream,
            timestamp=time.time() if timestamp is None else timestamp,
            events=tuple(update.events),
            occupancy=dict(update.occupancy),
            changed=frozenset(update.changed),
        )
        self.latest = report
        return report

    def _snapshot(self, ev: TrackEvent) -> None:
        """The event's best frame (``ev`` says its box and score) to the writer, unless the
        snapshot written already shows it; the sinks get it when it is written."""
        image = self._best.get(ev.id)
        if self.writer is None or image is None or self._saved.get(ev.id) == ev.best_score:
            return
        self._saved[ev.id] = ev.best_score
        self.writer.submit(ev, image)

    def close(self) -> None:
        """Write the snapshots that wait, then stop the writer."""
        if self.writer is not None:
            self.writer.close()
