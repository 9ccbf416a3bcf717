"""Object tracking: each frame's detections turned into tracked objects, zone membership,
debounced occupancy and events (docs/events.md). Pure logic but for the snapshot store."""

from .config import (
    Debounce,
    EventsConfig,
    LabelFilter,
    MaskConfig,
    ObjectsConfig,
    ZoneConfig,
    ZoneName,
    Zones,
    check_scene,
    check_zone_name,
)
from .events import END, NEW, UPDATE, TrackEvent, new_event_id
from .occupancy import Key, Occupancy
from .scene import SceneTracker, SceneUpdate
from .snapshots import SnapshotError, SnapshotStore
from .tracker import Track, Tracker
from .zones import Geometry, Polygon, anchor_point

__all__ = [
    "END",
    "NEW",
    "UPDATE",
    "Debounce",
    "EventsConfig",
    "Geometry",
    "Key",
    "LabelFilter",
    "MaskConfig",
    "ObjectsConfig",
    "Occupancy",
    "Polygon",
    "SceneTracker",
    "SceneUpdate",
    "SnapshotError",
    "SnapshotStore",
    "Track",
    "TrackEvent",
    "Tracker",
    "ZoneConfig",
    "ZoneName",
    "Zones",
    "anchor_point",
    "check_scene",
    "check_zone_name",
    "new_event_id",
]
