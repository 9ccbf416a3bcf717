"""The sink interface: where results go, and what a sink is given when it is built."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from ..result import Result

if TYPE_CHECKING:
    from ..health import HealthBoard
    from ..metrics import Metrics
    from .mqtt import MqttPool


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


class Sink(ABC):
    """A place results go. ``publish`` must not block the inference thread for long."""

    name = "sink"

    def start(self) -> None:  # noqa: B027 - a sink with nothing to open need not override it
        """Open files or connections; called once before the first ``publish``."""

    @abstractmethod
    def publish(self, result: Result) -> None:
        """Take one result (called from the stream's inference thread)."""

    def close(self) -> None:  # noqa: B027 - likewise
        """Flush and let go of what ``start`` opened."""
