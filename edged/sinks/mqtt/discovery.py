"""Home Assistant MQTT discovery: the configurations of one edged device's entities.

One device per edged (``identifiers: [edged_<node>]``, its model, version and live page);
per stream: its frame rate, the accelerator in use, its fallbacks to the CPU, the detection
switch, and for a detector its occupancy and counts (the whole frame and each zone, any
label and each tracked label) and its latest snapshot (an ``image`` entity); per Edge TPU
with a thermometer, its temperature; on a board with an Edge TPU, a ``problem`` binary sensor,
on while the status topic carries a warning (a USB 2 link, a hot TPU: :mod:`edged.doctor.live`),
the warnings as its attributes. Each is published retained to
``<discovery_prefix>/<component>/<node>/<object_id>/config`` with the full key names of Home
Assistant's schema; every entity shares the device's ``availability`` topic.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, Mapping, Optional

from ... import __version__
from ..base import SceneDescription
from .topics import ALL, DeviceTopics, slug

Configs = Dict[str, Dict[str, Any]]  # discovery topic -> its configuration


class StreamEntities:
    """What a stream offers Home Assistant: a detector's labels and zones (``scene``; None: a classifier)."""

    def __init__(self, stream: str, scene: Optional[SceneDescription]) -> None:
        self.stream = stream
        self.detector = scene is not None
        self.labels = scene.labels if scene is not None else ()
        self.zones = dict(scene.zones) if scene is not None else {}


class Discovery:
    def __init__(self, prefix: str, node: str, topics: DeviceTopics) -> None:
        self.prefix = prefix.rstrip("/")
        self.node = slug(node).replace("_", "-") if not _valid(node) else node
        self.topics = topics

    def config_topics(self) -> str:
        """The subscription that brings back this node's configurations (retained), to clean up."""
        return f"{self.prefix}/+/{self.node}/+/config"

    def is_ours(self, topic: str) -> bool:
        parts = topic.split("/")
        return len(parts) == 5 and parts[0] == self.prefix and parts[2] == self.node and parts[4] == "config"

    def configs(self, summary: Mapping[str, Any], streams: Iterable[StreamEntities]) -> Configs:
        device = self._device(summary)
        out: Configs = {}
        for s in streams:
            self._stream(out, device, s)
        for tpu in summary.get("edgetpus", []):
            if tpu.get("temperature") is None:
                continue
            name = str(tpu["name"])
            self._add(out, "sensor", f"edgetpu_{slug(name)}_temperature", device, {
                "name": f"Edge TPU {name} temperature", "state_topic": self.topics.temperature(name),
                "device_class": "temperature", "unit_of_measurement": "°C", "state_class": "measurement",
                "entity_category": "diagnostic",
            })  # fmt: skip
        if summary.get("edgetpus"):
            self._add(out, "binary_sensor", "edgetpu_problem", device, {
                "name": "Edge TPU problem", "device_class": "problem", "entity_category": "diagnostic",
                "state_topic": self.topics.status, "json_attributes_topic": self.topics.status,
                "value_template": "{{ 'ON' if value_json.warnings | default([]) | length > 0 else 'OFF' }}",
                "json_attributes_template": "{{ {'warnings': value_json.warnings | default([])} | tojson }}",
            })  # fmt: skip
        return out

    # ------------------------------------------------------------------ entities
    def _stream(self, out: Configs, device: Dict[str, Any], s: StreamEntities) -> None:
        t = self.topics.stream(s.stream)
        sid = slug(s.stream)
        self._add(out, "sensor", f"{sid}_fps", device, {
            "name": f"{s.stream} frame rate", "state_topic": t.fps, "unit_of_measurement": "fps",
            "state_class": "measurement", "suggested_display_precision": 1, "icon": "mdi:speedometer",
        })  # fmt: skip
        self._add(out, "sensor", f"{sid}_accelerator", device, {
            "name": f"{s.stream} accelerator", "state_topic": t.accelerator, "icon": "mdi:chip",
            "entity_category": "diagnostic",
        })  # fmt: skip
        self._add(out, "sensor", f"{sid}_fallbacks", device, {
            "name": f"{s.stream} CPU fallbacks", "state_topic": t.fallbacks, "state_class": "total_increasing",
            "icon": "mdi:swap-horizontal", "entity_category": "diagnostic",
        })  # fmt: skip
        self._add(out, "switch", f"{sid}_detect", device, {
            "name": f"{s.stream} detection", "command_topic": t.detect_set, "state_topic": t.detect,
            "payload_on": "ON", "payload_off": "OFF", "state_on": "ON", "state_off": "OFF", "icon": "mdi:motion-sensor",
        })  # fmt: skip
        if not s.detector:
            return
        self._add(out, "image", f"{sid}_snapshot", device, {
            "name": f"{s.stream} snapshot", "image_topic": t.snapshot, "content_type": "image/jpeg",
        })  # fmt: skip
        places: list[tuple[Optional[str], Iterable[str]]] = [(None, s.labels)]
        places += [(z, labels or s.labels) for z, labels in s.zones.items()]
        for zone, labels in places:
            for label in (None, *labels):
                self._occupancy(out, device, s, zone, label)

    def _occupancy(
        self, out: Configs, device: Dict[str, Any], s: StreamEntities, zone: Optional[str], label: Optional[str]
    ) -> None:
        t = self.topics.stream(s.stream)
        key = (zone, label)
        what = slug(label) if label is not None else ALL
        where = f"{slug(s.stream)}_{zone}" if zone is not None else slug(s.stream)
        words = " ".join(w for w in (s.stream, zone, label) if w)
        self._add(out, "binary_sensor", f"{where}_{what}_occupancy", device, {
            "name": f"{words} occupancy", "state_topic": t.occupancy(key), "device_class": "occupancy",
            "payload_on": "ON", "payload_off": "OFF",
        })  # fmt: skip
        self._add(out, "sensor", f"{where}_{what}_count", device, {
            "name": f"{words} count" if label else f"{words} objects", "state_topic": t.count(key),
            "state_class": "measurement", "icon": "mdi:counter",
        })  # fmt: skip

    # ------------------------------------------------------------------ helpers
    def _add(self, out: Configs, component: str, object_id: str, device: Dict[str, Any], cfg: Dict[str, Any]) -> None:
        uid = f"edged_{self.node}_{object_id}"
        cfg = {
            **cfg,
            "unique_id": uid,
            "object_id": f"edged_{slug(self.node)}_{object_id}",
            "availability_topic": self.topics.availability,
            "payload_available": "online",
            "payload_not_available": "offline",
            "device": device,
            "origin": {"name": "edged", "sw_version": __version__},
        }
        out[f"{self.prefix}/{component}/{self.node}/{object_id}/config"] = cfg

    def _device(self, summary: Mapping[str, Any]) -> Dict[str, Any]:
        device = {
            "identifiers": [f"edged_{self.node}"],
            "name": f"edged {summary.get('device', self.node)}",
            "manufacturer": "edged",
            "model": str(summary.get("hardware") or "edged"),
            "sw_version": str(summary.get("version", __version__)),
        }
        url = summary.get("url")
        if url:
            device["configuration_url"] = url
        return device


def _valid(name: str) -> bool:
    """Home Assistant's node_id and object_id: letters, digits, underscores and hyphens."""
    return bool(name) and all(c.isascii() and (c.isalnum() or c in "_-") for c in name)
