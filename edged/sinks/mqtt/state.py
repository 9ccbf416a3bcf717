"""A stream's retained state topics: occupancy and counts, the latest snapshot, the detection switch.

They carry the present, never a backlog: published at once while connected (QoS 1, retained),
not queued while the broker is away, and all published again each time the connection comes
up. A count or an occupancy is published only when it changes.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any, Dict, Optional

from ..base import OccupancyKey, SceneDescription, SceneReport
from .topics import StreamTopics

if TYPE_CHECKING:
    from paho.mqtt.client import Client

    from ...stream.switch import DetectSwitch

log = logging.getLogger("edged.sinks.mqtt")


def on_off(on: bool) -> str:
    return "ON" if on else "OFF"


class StreamState:
    def __init__(
        self,
        stream: str,
        topics: StreamTopics,
        client: Client,
        connected: threading.Event,
        switch: Optional[DetectSwitch],
        scene: Optional[SceneDescription] = None,
    ) -> None:
        self.stream = stream
        self.topics = topics
        self.client = client
        self.connected = connected
        self.switch = switch
        self._lock = threading.Lock()
        self._values: Dict[str, Any] = {}  # topic -> the present payload (str or JPEG bytes)
        self._sent: Dict[str, Any] = {}  # topic -> the payload published last on this connection
        self.scene = scene  # what Home Assistant's entities are made of (None: a classifier's stream)
        self._bad_command_said = False
        if switch is not None:
            self._values[topics.detect] = on_off(switch.on)

    # ------------------------------------------------------------------ the stream's side
    def update(self, report: SceneReport) -> None:
        """A frame's scene (the publish thread): what changed is published now."""
        with self._lock:
            for key, count in report.occupancy.items():
                self._set_key(key, count)
            if report.snapshot is not None:
                self._values[self.topics.snapshot] = report.snapshot.jpeg
            pending = self._pending()
        self._publish(pending)

    def _set_key(self, key: OccupancyKey, count: int) -> None:
        self._values[self.topics.count(key)] = str(int(count))
        self._values[self.topics.occupancy(key)] = on_off(count > 0)

    def switched(self, on: bool) -> None:
        """The detection switch changed (or a command asked for the state it has): say its state."""
        with self._lock:
            self._values[self.topics.detect] = on_off(on)
            self._sent.pop(self.topics.detect, None)  # a command is answered even when nothing changed
            pending = self._pending()
        self._publish(pending)

    # ------------------------------------------------------------------ the connection's side
    def republish(self) -> None:
        """The connection came up: every state again (the broker may have lost its retained ones)."""
        with self._lock:
            self._sent.clear()
            pending = self._pending()
        self._publish(pending)

    def command(self, payload: bytes) -> None:
        """``<stream>/detect/set``: ON or OFF (any case)."""
        if self.switch is None:
            return
        word = payload.decode("utf-8", "replace").strip().upper()
        if word not in ("ON", "OFF"):
            if not self._bad_command_said:
                self._bad_command_said = True
                log.warning(
                    "mqtt %s: %s must be ON or OFF, not %r: ignored", self.stream, self.topics.detect_set, word[:32]
                )
            return
        self.switch.set(word == "ON", "by an MQTT command")
        self.switched(self.switch.on)

    # ------------------------------------------------------------------ publishing
    def _pending(self) -> list[tuple[str, Any]]:
        """(under the lock) what differs from what this connection was sent, marked sent when connected."""
        if not self.connected.is_set():
            return []
        out = [(t, v) for t, v in self._values.items() if self._sent.get(t) != v]
        for t, v in out:
            self._sent[t] = v
        return out

    def _publish(self, pending: list[tuple[str, Any]]) -> None:
        for topic, payload in pending:
            self.client.publish(topic, payload, qos=1, retain=True)
