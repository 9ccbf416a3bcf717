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
BoxT = Tuple[float, float, float, float]  # xmin, ymin, xmax, ymax
_ANCHOR_Y = {"bottom_center": 0, "center": 1, "top_center": 2}  # the index of each anchor's y: ymax, centre, ymin
Row = Tuple[int, float, float, float, float, Optional["Polygon"]]


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
        corners = [(float(x), float(y)) for x, y in flat]
        self.rectangle = len(set(corners)) == 4 == len(corners) and all(
            p[0] == q[0] or p[1] == q[1] for p, q in zip(corners, corners[1:] + corners[:1])
        )  # axis-aligned (4 distinct corners, each edge vertical or horizontal): its bounding box

    def contains(self, point: Point) -> bool:
        return self.contains_xy(*point)

    def contains_xy(self, x: float, y: float) -> bool:
        if not (self.xmin <= x <= self.xmax and self.ymin <= y <= self.ymax):
            return False  # outside the bounding box: no need to ask OpenCV
        return self.rectangle or cv2.pointPolygonTest(self.points, (float(x), float(y)), False) >= 0


def _table_row(poly: Polygon, anchor: str) -> Row:
    """What a box's anchor is tested against: the index of its y, the polygon's bounding box, and the
    polygon itself unless a rectangle (then the bounding box says it all)."""
    return _ANCHOR_Y[anchor], poly.xmin, poly.ymin, poly.xmax, poly.ymax, None if poly.rectangle else poly


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
        self._masks: List[Row] = []
        self._by_label: Dict[str, List[Tuple]] = {}  # label -> the zones counting it: name, *row

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
        self._masks = [_table_row(poly, anchor) for poly, anchor in self.masks]
        self._by_label = {}
        return True

    def masked(self, box: Box) -> bool:
        """Whether a mask drops ``box`` (its anchor lies inside one)."""
        return self.masked_at((box.xmin, box.ymin, box.xmax, box.ymax))

    def masked_at(self, box: BoxT) -> bool:
        """:meth:`masked` of a box given as (xmin, ymin, xmax, ymax)."""
        if not self._masks:
            return False
        x, ys = (box[0] + box[2]) / 2, (box[3], (box[1] + box[3]) / 2, box[1])
        for a, x0, y0, x1, y1, poly in self._masks:
            y = ys[a]
            if x0 <= x <= x1 and y0 <= y <= y1 and (poly is None or poly.contains_xy(x, y)):
                return True
        return False

    def zones_of(self, box: Box, label: str) -> Tuple[str, ...]:
        """The zones ``box`` of ``label`` lies in now (by each zone's anchor; zones that count the label)."""
        return self.zones_at((box.xmin, box.ymin, box.xmax, box.ymax), label)

    def zones_at(self, box: BoxT, label: str) -> Tuple[str, ...]:
        """:meth:`zones_of` a box given as (xmin, ymin, xmax, ymax)."""
        table = self._by_label.get(label)
        if table is None:
            table = self._by_label[label] = [
                (z.name, *_table_row(z.polygon, z.anchor)) for z in self.zones if z.counts(label)
            ]
        if not table:
            return ()
        x, ys = (box[0] + box[2]) / 2, (box[3], (box[1] + box[3]) / 2, box[1])  # the anchors' y: _ANCHOR_Y
        inside = []
        for name, a, x0, y0, x1, y1, poly in table:
            y = ys[a]
            if x0 <= x <= x1 and y0 <= y <= y1 and (poly is None or poly.contains_xy(x, y)):
                inside.append(name)
        return tuple(inside)
