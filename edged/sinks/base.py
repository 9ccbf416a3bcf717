"""The sink interface: where results go, and what a sink is given when it is built."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Optional

from ..result import Result

if TYPE_CHECKING:
    from ..health import HealthBoard
    from ..metrics import Metrics
    from ..stream.switch import DetectSwitch
    from .mqtt import MqttPool

# an occupancy key: (zone, label); None as the zone is the whole frame, None as the label any label
OccupancyKey = tuple[Optional[str], Optional[str]]


@dataclass(frozen=True)
class Snapshot:
    """The best frame of an event, as a JPEG file under the state directory."""

    event_id: str
    label: str
    path: str
    jpeg: bytes = field(repr=False)


@dataclass(frozen=True)
class SceneDescription:
    """What a detector stream counts, known at start (Home Assistant's entities are made of it):
    the labels with entities of their own, and the zones with the labels each counts."""

    labels: tuple[str, ...]
    zones: Mapping[str, tuple[str, ...]]


@dataclass(frozen=True)
class SceneReport:
    """What a detector stream's tracking made of one frame (or of the detection being switched off):
    the events it started, updated and ended, the occupancy now (every key, the present counts),
    the keys whose count changed, and the snapshot saved (:mod:`edged.stream.scene`)."""

    stream: str
    timestamp: float
    events: tuple[Any, ...]  # edged.tracking.TrackEvent: .type, .id, .to_dict()
    occupancy: Mapping[OccupancyKey, int]
    changed: frozenset[OccupancyKey]
    snapshot: Optional[Snapshot] = None


@dataclass(frozen=True)
class SinkContext:
    """What a sink of one stream is built with: its stream, the metrics, the MQTT connections.

    The service owns the MQTT connection pool and passes it here; a sink built outside the
    daemon (a test, a tool) may pass ``mqtt=None`` and get a pool of its own.
    """

    stream: str
    metrics: Optional[Metrics] = None
    mqtt: Optional[MqttPool] = None
    health: Optional[HealthBoard] = None  # where a sink's own thread reports its failures (None: its own board)
    switch: Optional[DetectSwitch] = None  # the stream's detection on/off (a sink may offer it as a command)
    scene: Optional[SceneDescription] = None  # a detector's labels and zones (None: a classifier)


class Sink(ABC):
    """A place results go. ``publish`` must not block the inference thread for long."""

    name = "sink"

    def start(self) -> None:  # noqa: B027 - a sink with nothing to open need not override it
        """Open files or connections; called once before the first ``publish``."""

    @abstractmethod
    def publish(self, result: Result) -> None:
        """Take one result (called from the stream's inference thread)."""

    def scene(self, report: SceneReport) -> None:  # noqa: B027 - a sink without events ignores them
        """Take what a detector stream's tracking made of a frame (called before that frame's ``publish``)."""

    def close(self) -> None:  # noqa: B027 - likewise
        """Flush and let go of what ``start`` opened."""
