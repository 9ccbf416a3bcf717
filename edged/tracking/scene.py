"""One stream's scene: each frame's detections filtered, masked, tracked, placed in zones,
counted (debounced) and turned into events. Pure logic: no clock, no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Set, Tuple

from ..result import Object
from .config import ANY_LABEL, EventsConfig, LabelFilter, MaskConfig, ObjectsConfig, ZoneConfig
from .events import EventState, TrackEvent
from .occupancy import Key, Occupancy
from .tracker import BoxT, Step, Tracker
from .zones import Geometry


@dataclass
class SceneUpdate:
    """What one frame changed.

    ``objects``: the detections kept (tracked labels, past the filters and masks); a confirmed
    track's carries its ``track_id``, the zones it is counted in and its stationary flag; a
    detection of a track not confirmed yet (or a low-score one that continues no track) has no
    ``track_id``. ``occupancy``: every count known, (zone or None, label or None) -> objects;
    ``changed``: the keys whose count changed in this frame; ``best``: the ids of the events
    whose best frame is this one (keep the frame for their snapshot); ``labels_added``: the
    labels seen for the first time (``track`` unset), whose counts appear in ``occupancy`` from
    this frame on.
    """

    objects: List[Object] = field(default_factory=list)
    events: List[TrackEvent] = field(default_factory=list)
    occupancy: Dict[Key, int] = field(default_factory=dict)
    changed: Set[Key] = field(default_factory=set)
    best: List[str] = field(default_factory=list)
    labels_added: List[str] = field(default_factory=list)


@dataclass
class _Still:
    """Where a track's box stopped, since when, and whether that makes it stationary."""

    box: BoxT
    since: float
    stationary: bool = False


def _tracked(o: Object, track_id: int, zones: Tuple[str, ...], stationary: bool) -> Object:
    """``o`` with its track's id, the zones it is counted in and its stationary flag."""
    return Object(o.class_id, o.label, o.score, o.box, track_id, zones, stationary)


def _to_pixels(area: float, frame_area: float) -> float:
    return area * frame_area if area <= 1 else area


class SceneTracker:
    """The tracking of one stream (see docs/events.md)."""

    def __init__(
        self,
        stream: str,
        objects_cfg: ObjectsConfig,
        zones: Dict[str, ZoneConfig],
        masks: Sequence[MaskConfig],
        events_cfg: EventsConfig,
    ) -> None:
        self.stream = stream
        self.cfg = objects_cfg
        self.events_cfg = events_cfg
        self._zone_cfgs = dict(zones)
        self.geometry = Geometry(self._zone_cfgs, list(masks))
        self.tracker = Tracker(
            objects_cfg.max_missed_frames, objects_cfg.min_hits, objects_cfg.match_iou, objects_cfg.new_track_score
        )
        self.occupancy = Occupancy(
            {None: (objects_cfg, None), **{n: (z.debounce(objects_cfg), z.labels) for n, z in self._zone_cfgs.items()}}
        )
        self._track = frozenset(objects_cfg.track) if objects_cfg.track is not None else None
        self._labels: List[str] = list(objects_cfg.track or [])
        for label in self._labels:
            self.occupancy.add_label(label)
        self._filters: Dict[str, Tuple[float, float, float]] = {}  # label -> min score, min/max area (pixels)
        self._events: Dict[int, EventState] = {}  # by track serial
        self._still: Dict[int, _Still] = {}

    def labels(self) -> List[str]:
        """The labels tracked: the ``track`` list, else every label seen so far (in order)."""
        return list(self._labels)

    def zones(self) -> Dict[str, Optional[Tuple[str, ...]]]:
        """Each zone's name and the labels it counts (None: every label tracked)."""
        return {n: (tuple(z.labels) if z.labels is not None else None) for n, z in self._zone_cfgs.items()}

    def _resize(self, width: int, height: int) -> None:
        old = self.geometry.size
        if not self.geometry.resize(width, height):
            return
        self._filters = {}
        if old is not None:  # the source came back at another size: the tracks follow
            sx, sy = width / old[0], height / old[1]
            self.tracker.rescale(sx, sy)
            for s in self._still.values():
                x0, y0, x1, y1 = s.box
                s.box = (x0 * sx, y0 * sy, x1 * sx, y1 * sy)

    def _limits(self, label: str) -> Tuple[float, float, float]:
        limits = self._filters.get(label)
        if limits is None:
            f = self.cfg.filters.get(label) or self.cfg.filters.get(ANY_LABEL) or LabelFilter()
            w, h = self.geometry.size or (0, 0)
            hi = float("inf") if f.max_area is None else _to_pixels(f.max_area, w * h)
            limits = self._filters[label] = (f.min_score, _to_pixels(f.min_area, w * h), hi)
        return limits

    def _counts_still(self, label: str) -> bool:
        f = self.cfg.filters.get(label) or self.cfg.filters.get(ANY_LABEL)
        return f is None or f.count_stationary

    def _keep(self, objects: Sequence[Object], update: SceneUpdate) -> Tuple[List[Object], List[BoxT]]:
        """The detections kept, and their boxes as (xmin, ymin, xmax, ymax)."""
        kept, boxes = [], []
        track, filters, masked = self._track, self._filters, self.geometry.masked_at
        for o in objects:
            label = o.label
            if track is not None and label not in track:
                continue
            min_score, min_area, max_area = filters.get(label) or self._limits(label)
            b = o.box
            box = (b.xmin, b.ymin, b.xmax, b.ymax)
            area = (box[2] - box[0]) * (box[3] - box[1])
            if o.score < min_score or area < min_area or area > max_area or masked(box):
                continue
            kept.append(o)
            boxes.append(box)
            if track is None and label not in self._labels:
                self._labels.append(label)
                self.occupancy.add_label(label)
                update.labels_added.append(label)
        return kept, boxes

    def update(self, objects: Sequence[Object], width: int, height: int, timestamp: float) -> SceneUpdate:
        """One frame: its detections (frame pixels), its size and its wall-clock timestamp."""
        self._resize(width, height)
        update = SceneUpdate()
        kept, boxes = self._keep(objects, update)
        step = self.tracker.update(boxes, [o.label for o in kept], [o.score for o in kept])
        events = self.events_cfg.enabled
        if events:
            for t in step.confirmed:
                self._events[t.serial] = EventState(
                    self.stream, t.label, t.track_id or 0, timestamp, self.events_cfg.update_interval_seconds
                )
        update.objects = list(kept)
        self._frame(step, boxes, timestamp, update)
        for t in step.ended:
            self.occupancy.observe(t.serial, t.label, None, True, timestamp)
        for t in step.ended:
            state = self._events.pop(t.serial, None) if events else None
            if state is not None:
                update.events.append(state.end(state.last_seen))
            self.occupancy.end(t.serial)
            self._still.pop(t.serial, None)
        for t in step.dropped:
            self.occupancy.forget(t.serial)
        update.changed = self.occupancy.finish(timestamp)
        update.occupancy = dict(self.occupancy.counts)
        return update

    def _frame(self, step: Step, boxes: List[BoxT], now: float, update: SceneUpdate) -> None:
        """Each track in this frame: its zones (debounced into the occupancy), whether it stands
        still, its event (if any); the detection of a confirmed track gets its id, zones and flag."""
        detection = {t.serial: i for i, t in enumerate(step.assigned) if t is not None}
        observe, zones_at, objects = self.occupancy.observe, self.geometry.zones_at, update.objects
        events = self._events if self.events_cfg.enabled else {}
        for t in self.tracker.tracks:
            serial = t.serial
            d = detection.get(serial)
            confirmed = t.track_id is not None
            still = self._stationary(serial, boxes[d], now) if confirmed and d is not None else None
            # a stationary object of a label that does not count its stationary ones is as if not seen
            unseen = d is None or (still is not None and still.stationary and not self._counts_still(t.label))
            counted = observe(serial, t.label, None if unseen else zones_at(boxes[d], t.label), confirmed, now)
            if not confirmed:
                continue
            if d is None:
                seen, still = None, self._still.get(serial)
            else:
                o = objects[d]
                seen = (o.score, o.box)
                objects[d] = _tracked(o, t.track_id, counted, still.stationary)
            state = events.get(serial)
            if state is None:
                continue
            event, best = state.frame(now, seen, counted, still is not None and still.stationary, t.hits)
            if event is not None:
                update.events.append(event)
            if best:
                update.best.append(state.id)

    def _stationary(self, serial: int, box: BoxT, now: float) -> _Still:
        """Where the track's box stopped, updated with its box in this frame (stopped again unless
        its IoU with where it stopped is at least ``stationary_iou``)."""
        s = self._still.get(serial)
        if s is None:
            s = self._still[serial] = _Still(box, now)
            return s
        ax0, ay0, ax1, ay1 = s.box
        bx0, by0, bx1, by1 = box
        ix = (bx1 if bx1 < ax1 else ax1) - (bx0 if bx0 > ax0 else ax0)  # min(ax1, bx1) - max(ax0, bx0)
        iy = (by1 if by1 < ay1 else ay1) - (by0 if by0 > ay0 else ay0)
        inter = ix * iy
        iou = 0.0 if ix <= 0 or iy <= 0 else inter / ((ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter)
        if iou < self.cfg.stationary_iou:
            s.box, s.since, s.stationary = box, now, False
        elif not s.stationary and self.cfg.stationary_seconds > 0:
            s.stationary = now - s.since >= self.cfg.stationary_seconds
        return s

    def end_all(self, timestamp: float) -> SceneUpdate:
        """Tracking stops (detection switched off, the stream stopping): every event ends at
        ``timestamp``, every count goes to 0 at once."""
        update = SceneUpdate()
        update.events = [state.end(timestamp) for state in self._events.values()]
        self._events = {}
        self._still = {}
        self.tracker.reset()
        update.changed = self.occupancy.clear()
        update.occupancy = dict(self.occupancy.counts)
        return update
