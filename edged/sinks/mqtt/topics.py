"""The topics of one device and its streams (docs/mqtt.md, docs/home-assistant.md), made in one place."""

from __future__ import annotations

import re
from typing import Optional

from ..base import OccupancyKey

ALL = "all"  # the topic level and object id of "every label" (and of the whole frame's occupancy)


def slug(name: str) -> str:
    """A label or name as a topic level and a Home Assistant object id: lowercase, [a-z0-9_] only."""
    s = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "x"
    return f"label_{s}" if s == ALL else s


class DeviceTopics:
    def __init__(self, prefix: str, device: str) -> None:
        self.base = f"{prefix.rstrip('/')}/{device}"
        self.availability = f"{self.base}/availability"
        self.status = f"{self.base}/status"

    def stream(self, stream: str) -> StreamTopics:
        return StreamTopics(f"{self.base}/{stream}")

    def temperature(self, tpu: str) -> str:
        return f"{self.base}/edgetpu/{slug(tpu)}/temperature"

    def commands(self) -> str:
        """The subscription of every stream's commands."""
        return f"{self.base}/+/detect/set"


class StreamTopics:
    def __init__(self, base: str) -> None:
        self.base = base
        self.result = f"{base}/result"
        self.events = f"{base}/events"
        self.snapshot = f"{base}/snapshot"
        self.detect = f"{base}/detect"
        self.detect_set = f"{base}/detect/set"
        self.fps = f"{base}/fps"
        self.accelerator = f"{base}/accelerator"
        self.fallbacks = f"{base}/fallbacks"

    @staticmethod
    def replay(topic: str) -> str:
        """Where a message queued while the broker was away goes when it is sent at last."""
        return f"{topic}/replay"

    def occupancy(self, key: OccupancyKey) -> str:
        return f"{self._place(key)}/occupancy"

    def count(self, key: OccupancyKey) -> str:
        return f"{self._place(key)}/count"

    def _place(self, key: OccupancyKey) -> str:
        zone, label = key
        what = slug(label) if label is not None else ALL
        return f"{self.base}/objects/{what}" if zone is None else f"{self.base}/zones/{zone}/{what}"


def stream_of_command(topic: str, base: str) -> Optional[str]:
    """The stream a ``<base>/<stream>/detect/set`` topic names, else None."""
    head, tail = f"{base}/", "/detect/set"
    if topic.startswith(head) and topic.endswith(tail):
        middle = topic[len(head) : -len(tail)]
        return middle if middle and "/" not in middle else None
    return None
