"""The configuration of tracking: which objects (``objects:``), the zones (``zones:``), the masks
(``masks:``) and the events (``events:``) of a stream. See docs/events.md."""

from __future__ import annotations

import math
import re
from typing import Annotated, Dict, List, Literal, Optional, Tuple

from pydantic import AfterValidator, Field, field_validator, model_validator

from ..registry import StrictConfig

ZONE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
ANY_LABEL = "*"

Units = Literal["auto", "pixels", "fractions"]
Anchor = Literal["bottom_center", "center", "top_center"]


def check_zone_name(name: str) -> str:
    """``name`` when it can be an MQTT topic level and a Home Assistant object id, else ``ValueError``."""
    if not ZONE_NAME.match(name):
        raise ValueError(f"zone name {name!r}: 1 to 64 letters, digits, '_' or '-'")
    return name


ZoneName = Annotated[str, AfterValidator(check_zone_name)]


def _check_polygon(points: List[List[float]], units: str) -> List[List[float]]:
    if len(points) < 3:
        raise ValueError(f"a polygon needs at least 3 points, not {len(points)}")
    for p in points:
        if len(p) != 2:
            raise ValueError(f"a point is [x, y], not {p}")
        if not all(math.isfinite(v) for v in p):
            raise ValueError(f"point {p}: not a finite number")
        if min(p) < 0:
            raise ValueError(f"point {p}: negative coordinate")
        if units == "fractions" and max(p) > 1:
            raise ValueError(f"point {p}: fractions of the frame are <= 1 (units: fractions)")
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    area2 = sum(xs[i] * ys[i - 1] - xs[i - 1] * ys[i] for i in range(len(points)))
    if area2 == 0:
        raise ValueError("the polygon has no area (its points are on one line)")
    return points


class LabelFilter(StrictConfig):
    """Which detections of a label are kept (before tracking)."""

    min_score: float = Field(0.0, ge=0, le=1, description="detections scoring less are dropped")
    min_area: float = Field(0.0, ge=0, description="smallest box kept: a fraction of the frame (<= 1) or pixels (> 1)")
    max_area: Optional[float] = Field(
        None, gt=0, description="largest box kept: a fraction of the frame (<= 1) or pixels (> 1); unset: no limit"
    )
    count_stationary: bool = Field(
        True,
        description="false: a stationary object of this label (a parked car) stops counting in the occupancy "
        "(tracked still, its events go on)",
    )

    @model_validator(mode="after")
    def _areas(self) -> LabelFilter:
        lo, hi = self.min_area, self.max_area
        if hi is not None and (lo <= 1) == (hi <= 1) and lo >= hi:
            raise ValueError(f"min_area ({lo}) must be smaller than max_area ({hi})")
        return self


class Debounce(StrictConfig):
    """When an object counts as in a zone, and when it no longer does."""

    enter_frames: int = Field(2, ge=1, le=10000, description="consecutive frames inside before it enters")
    enter_seconds: float = Field(0.0, ge=0, le=86400, description="and at least this long inside")
    leave_seconds: float = Field(2.0, ge=0, le=86400, description="it leaves after being out (or lost) this long")


class ObjectsConfig(Debounce):
    """Which objects are tracked, and how (``objects:``). Its debounce is the whole frame's,
    and every zone's that sets none of its own."""

    track: Optional[List[str]] = Field(None, description="labels tracked (default: every label); others are dropped")
    filters: Dict[str, LabelFilter] = Field(
        default_factory=dict, description="per label; '*' applies to every label without its own entry"
    )
    max_missed_frames: int = Field(5, ge=0, le=10000, description="a track survives this many frames undetected")
    min_hits: int = Field(2, ge=1, le=1000, description="frames a new track needs to be confirmed (its event starts)")
    match_iou: float = Field(
        0.2, gt=0, le=1, description="a detection continues a track when its box overlaps the predicted box this much"
    )
    new_track_score: float = Field(
        0.5,
        ge=0,
        le=1,
        description="detections scoring this or more are matched first and may start tracks; lower ones only "
        "continue tracks",
    )
    stationary_seconds: float = Field(
        10.0, ge=0, le=86400, description="a track whose box barely moved this long is stationary (0: never)"
    )
    stationary_iou: float = Field(
        0.7, gt=0, lt=1, description="'barely moved': its box still overlaps where it stopped by this IoU"
    )

    @field_validator("track")
    @classmethod
    def _track(cls, v: Optional[List[str]]) -> Optional[List[str]]:
        if v is not None:
            if not v:
                raise ValueError("an empty list tracks nothing: leave track unset to track every label")
            if len(set(v)) != len(v):
                raise ValueError("a label is listed twice")
        return v

    @model_validator(mode="after")
    def _filters_tracked(self) -> ObjectsConfig:
        if self.track is not None:
            for label in self.filters:
                if label != ANY_LABEL and label not in self.track:
                    tracked = ", ".join(self.track)
                    raise ValueError(f"filters.{label}: label {label!r} is not tracked (track: {tracked})")
        return self


class _Polygon(StrictConfig):
    coordinates: List[List[float]] = Field(description="the polygon's points, [[x, y], ...]")
    units: Units = Field(
        "auto", description="auto: fractions of the frame when every value is <= 1, else pixels; pixels; fractions"
    )

    @model_validator(mode="after")
    def _points(self) -> _Polygon:
        try:
            _check_polygon(self.coordinates, self.units)
        except ValueError as exc:
            raise ValueError(f"coordinates: {exc}") from None
        return self

    def points(self) -> Tuple[Tuple[float, float], ...]:
        return tuple((float(x), float(y)) for x, y in self.coordinates)

    def fractions(self) -> bool:
        """Whether the coordinates are fractions of the frame (resolved against its size)."""
        if self.units == "auto":
            return all(v <= 1 for p in self.coordinates for v in p)
        return self.units == "fractions"


class ZoneConfig(_Polygon):
    """A named area of the frame (``zones: {name: ...}``)."""

    anchor: Anchor = Field("bottom_center", description="the point of a box that must lie inside")
    labels: Optional[List[str]] = Field(None, description="only these labels count in this zone (default: every one)")
    enter_frames: Optional[int] = Field(None, ge=1, le=10000, description="default: objects.enter_frames")
    enter_seconds: Optional[float] = Field(None, ge=0, le=86400, description="default: objects.enter_seconds")
    leave_seconds: Optional[float] = Field(None, ge=0, le=86400, description="default: objects.leave_seconds")

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: Optional[List[str]]) -> Optional[List[str]]:
        if v is not None and not v:
            raise ValueError("an empty list counts nothing: leave labels unset to count every label")
        return v

    def debounce(self, objects: ObjectsConfig) -> Debounce:
        """This zone's debounce: its own values, else those of ``objects``."""

        def pick(own: Optional[float], default: float) -> float:
            return default if own is None else own

        return Debounce(
            enter_frames=int(pick(self.enter_frames, objects.enter_frames)),
            enter_seconds=pick(self.enter_seconds, objects.enter_seconds),
            leave_seconds=pick(self.leave_seconds, objects.leave_seconds),
        )


class MaskConfig(_Polygon):
    """An area where detections are dropped: those whose anchor lies inside."""

    anchor: Anchor = Field("bottom_center", description="the point of a box that drops it when inside")


Zones = Dict[ZoneName, ZoneConfig]


class EventsConfig(StrictConfig):
    """The events of tracked objects and their snapshots (``events:``)."""

    enabled: bool = Field(True, description="send new/update/end events of tracked objects")
    snapshots: bool = Field(True, description="save the best frame of each event as a JPEG under the state directory")
    snapshot_max_files: int = Field(500, ge=1, le=1_000_000, description="snapshots kept at most (oldest go first)")
    snapshot_max_megabytes: float = Field(200.0, gt=0, le=1_000_000, description="their total size at most")
    snapshot_max_age_hours: float = Field(168.0, gt=0, le=87600, description="older snapshots are deleted")
    update_interval_seconds: float = Field(
        1.0, ge=0, le=3600, description="an update for a better score alone is sent at most this often"
    )


def check_scene(objects: ObjectsConfig, zones: Dict[str, ZoneConfig]) -> None:
    """Cross-checks of a stream's sections (``ValueError``): a zone's labels must be tracked."""
    if objects.track is None:
        return
    for name, zone in zones.items():
        for label in zone.labels or []:
            if label not in objects.track:
                raise ValueError(
                    f"zones.{name}.labels: label {label!r} is not tracked (objects.track: {', '.join(objects.track)})"
                )
