"""Zones and masks: polygons in pixels or fractions of the frame, resolved against the frame's
size, and which of them a box's anchor point lies in."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from ..result import Box
from .config import MaskConfig, ZoneConfig

Point = Tuple[float, float]


def anchor_point(box: Box, anchor: str) -> Point:
    """The point of ``box`` that decides whether it is inside a polygon."""
    x = (box.xmin + box.xmax) / 2
    if anchor == "bottom_center":
        return x, box.ymax
    if anchor == "center":
        return x, (box.ymin + box.ymax) / 2
    if anchor == "top_center":
        return x, box.ymin
    raise ValueError(f"unknown anchor {anchor!r}")


class Polygon:
    """A polygon in frame pixels; a point on its edge is inside."""

    def __init__(self, points: Sequence[Point]) -> None:
        self.points = np.asarray(points, dtype=np.float32).reshape(-1, 1, 2)
        flat = self.points.reshape(-1, 2)
        self.xmin, self.ymin = (float(v) for v in flat.min(axis=0))
        self.xmax, self.ymax = (float(v) for v in flat.max(axis=0))

    def contains(self, point: Point) -> bool:
        x, y = point
        if x < self.xmin or x > self.xmax or y < self.ymin or y > self.ymax:
            return False  # outside the bounding box: no need to ask OpenCV
        return cv2.pointPolygonTest(self.points, (float(x), float(y)), False) >= 0


def resolve(points: Sequence[Point], fractions: bool, width: int, height: int) -> Polygon:
    """The polygon in pixels of a ``width`` x ``height`` frame."""
    if fractions:
        points = [(x * width, y * height) for x, y in points]
    return Polygon(points)


@dataclass(frozen=True)
class Zone:
    """A zone resolved to a frame size."""

    name: str
    polygon: Polygon
    anchor: str
    labels: Optional[frozenset]  # None: every label counts

    def counts(self, label: str) -> bool:
        return self.labels is None or label in self.labels


class Geometry:
    """The zones and masks of a stream, resolved again whenever the frame size changes (fractions
    follow the new size; pixel coordinates stay as written)."""

    def __init__(self, zones: Dict[str, ZoneConfig], masks: List[MaskConfig]) -> None:
        self._zone_cfgs = dict(zones)
        self._mask_cfgs = list(masks)
        self.size: Optional[Tuple[int, int]] = None
        self.zones: List[Zone] = []
        self.masks: List[Tuple[Polygon, str]] = []

    def resize(self, width: int, height: int) -> bool:
        """Resolve for a ``width`` x ``height`` frame; True when the size changed."""
        if self.size == (width, height):
            return False
        self.size = (width, height)
        self.zones = [
            Zone(name, resolve(z.points(), z.fractions(), width, height), z.anchor,
                 frozenset(z.labels) if z.labels is not None else None)
            for name, z in self._zone_cfgs.items()
        ]  # fmt: skip
        self.masks = [(resolve(m.points(), m.fractions(), width, height), m.anchor) for m in self._mask_cfgs]
        return True

    def masked(self, box: Box) -> bool:
        """Whether a mask drops ``box`` (its anchor lies inside one)."""
        return any(poly.contains(anchor_point(box, anchor)) for poly, anchor in self.masks)

    def zones_of(self, box: Box, label: str) -> Tuple[str, ...]:
        """The zones ``box`` of ``label`` lies in now (by each zone's anchor; zones that count the label)."""
        points: Dict[str, Point] = {}
        inside = []
        for zone in self.zones:
            if not zone.counts(label):
                continue
            p = points.get(zone.anchor)
            if p is None:
                p = points[zone.anchor] = anchor_point(box, zone.anchor)
            if zone.polygon.contains(p):
                inside.append(zone.name)
        return tuple(inside)
