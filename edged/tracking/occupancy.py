"""Occupancy: how many tracked objects of each label are in each zone, debounced per object.

An object enters a zone after being inside ``enter_frames`` consecutive frames and at least
``enter_seconds``; it leaves after being out of it (or undetected) ``leave_seconds``. The whole
frame is the zone ``None`` (inside: detected); "any label" is the label ``None``. Times are the
frames' timestamps, never the clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Collection, Dict, List, Optional, Set, Tuple

from .config import Debounce

Key = Tuple[Optional[str], Optional[str]]  # (zone or None: the whole frame, label or None: any label)
EPSILON = 1e-9  # timestamps are sums of float steps: 2.0 s may come out as 1.9999999999


@dataclass
class _Member:
    """One object in one zone."""

    streak: int = 0  # consecutive frames inside
    since: float = 0.0  # the first frame of the streak
    inside: bool = False  # counted
    out_since: Optional[float] = None  # out (or undetected) since, while counted


@dataclass
class _Object:
    label: str
    members: Dict[Optional[str], _Member] = field(default_factory=dict)
    zones: Tuple[str, ...] = ()  # the zones it is counted in (in the order of the configuration)


class Occupancy:
    """The counts of one stream. ``zones`` maps each zone (and ``None``, the whole frame) to its
    debounce and the labels it counts (``None``: every label)."""

    def __init__(self, zones: Dict[Optional[str], Tuple[Debounce, Optional[Collection[str]]]]) -> None:
        self._debounce = {z: d for z, (d, _) in zones.items()}
        self._labels = {z: (frozenset(ls) if ls is not None else None) for z, (_, ls) in zones.items()}
        self.counts: Dict[Key, int] = {(z, None): 0 for z in zones}
        self._objects: Dict[int, _Object] = {}
        self._ended: List[_Object] = []  # ended tracks still counted until they leave
        self._touched: Dict[Key, int] = {}  # count of each key changed in this frame, before it changed

    def add_label(self, label: str) -> None:
        """Count ``label`` from now on (its keys appear, at 0)."""
        for zone, labels in self._labels.items():
            if labels is None or label in labels:
                self.counts.setdefault((zone, label), 0)

    def observe(
        self, key: int, label: str, inside: Optional[Collection[str]], confirmed: bool, now: float
    ) -> Tuple[str, ...]:
        """Object ``key`` in this frame: detected in the zones ``inside`` (None: not detected).
        Only a ``confirmed`` object enters. Returns the zones it is counted in now (:meth:`zones_of`)."""
        obj = self._objects.get(key)
        if obj is None:
            self.add_label(label)
            obj = self._objects[key] = _Object(label)
            for zone, labels in self._labels.items():
                if labels is None or label in labels:
                    obj.members[zone] = _Member()
        stepped = False
        for zone, m in obj.members.items():
            if inside is not None and (zone is None or zone in inside):
                if m.streak == 0:
                    m.since = now
                m.streak += 1
                m.out_since = None
                if not m.inside and confirmed and self._enter(m, zone, label, now):
                    stepped = True
            elif not m.inside:  # out and not counted: nothing to debounce
                m.streak = 0
            elif self._out(m, zone, label, now):
                stepped = True
        if stepped:
            obj.zones = tuple(z for z, m in obj.members.items() if z is not None and m.inside)
        return obj.zones

    def _enter(self, m: _Member, zone: Optional[str], label: str, now: float) -> bool:
        """``m``, inside and not counted, is counted once inside long enough; True when it enters."""
        d = self._debounce[zone]
        if m.streak >= d.enter_frames and now - m.since >= d.enter_seconds - EPSILON:
            m.inside = True
            if not self._take_over(zone, label):
                self._add((zone, label), 1)
                self._add((zone, None), 1)
            return True
        return False

    def _out(self, m: _Member, zone: Optional[str], label: str, now: float) -> bool:
        """``m`` is out (or undetected) in this frame; True when it leaves (out long enough)."""
        m.streak = 0
        if m.inside:
            if m.out_since is None:
                m.out_since = now
            if now - m.out_since >= self._debounce[zone].leave_seconds - EPSILON:
                m.inside = False
                self._add((zone, label), -1)
                self._add((zone, None), -1)
                return True
        return False

    def _take_over(self, zone: Optional[str], label: str) -> bool:
        """An object entering takes the place of an ended track of its label still counted there
        (the same object seen again under a new id is not counted twice)."""
        for old in self._ended:
            m = old.members.get(zone)
            if old.label == label and m is not None and m.inside:
                m.inside = False
                return True
        return False

    def _add(self, key: Key, delta: int) -> None:
        before = self.counts.get(key, 0)
        self._touched.setdefault(key, before)
        self.counts[key] = before + delta

    def end(self, key: int) -> None:
        """Object ``key``'s track ended: it stays counted where it is until it leaves."""
        obj = self._objects.pop(key, None)
        if obj is not None and any(m.inside for m in obj.members.values()):
            self._ended.append(obj)

    def forget(self, key: int) -> None:
        """Object ``key`` was never confirmed and is gone."""
        self._objects.pop(key, None)

    def zones_of(self, key: int) -> Tuple[str, ...]:
        """The zones object ``key`` is counted in (in the order of the configuration)."""
        obj = self._objects.get(key)
        return () if obj is None else obj.zones

    def finish(self, now: float) -> Set[Key]:
        """End the frame: ended tracks go on leaving; returns the keys whose count changed."""
        for obj in self._ended:
            for zone, m in obj.members.items():
                if m.inside:
                    self._out(m, zone, obj.label, now)
        self._ended = [o for o in self._ended if any(m.inside for m in o.members.values())]
        changed = {k for k, before in self._touched.items() if self.counts[k] != before}
        self._touched = {}
        return changed

    def clear(self) -> Set[Key]:
        """Every object gone at once: every count to 0; returns the keys that changed."""
        changed = {k for k, n in self.counts.items() if n}
        self.counts = dict.fromkeys(self.counts, 0)
        self._objects, self._ended, self._touched = {}, [], {}
        return changed
