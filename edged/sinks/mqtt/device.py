"""A connection's device topics: availability, the streams' frame rate, accelerator and fallbacks,
the Edge TPUs' temperatures, the detection commands, and Home Assistant's discovery.

Owned by a :class:`~.connection.Connection`: ``connected()`` from paho's thread when the
connection comes up, ``poll(summary)`` from the status thread every second, ``on_message``
from paho's thread. Values are published retained when they change (the frame rate when it
moves by 0.5 fps or more, or every status interval) and all again at each connection.
Discovery is published when the connection comes up, when Home Assistant says ``online`` on
``<discovery_prefix>/status``, and when the entities change (a reload, a label seen for the
first time); the configurations of entities that are gone are removed (an empty retained
message), both those this connection published and those found retained from before.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Dict, Mapping, Optional

from .discovery import Configs, Discovery, StreamEntities
from .topics import DeviceTopics, stream_of_command

if TYPE_CHECKING:
    from paho.mqtt.client import Client, MQTTMessage

    from .config import MqttSinkConfig
    from .connection import Connection

log = logging.getLogger("edged.sinks.mqtt")

FPS_STEP = 0.5  # a frame rate is published again when it moved this much (or at the status interval)


class DeviceState:
    def __init__(self, conn: Connection, cfg: MqttSinkConfig, topics: DeviceTopics) -> None:
        self.conn = conn
        self.topics = topics
        self.discovery = Discovery(cfg.discovery_prefix, conn.device, topics)
        self.announce = cfg.discovery  # False: none published, and what was published before is removed
        self._lock = threading.Lock()
        self._sent: Dict[str, tuple[str, float]] = {}  # topic -> (payload, when) on this connection
        self._configs: Configs = {}  # the discovery published on this connection
        self._configs_json: Dict[str, str] = {}

    # ------------------------------------------------------------------ paho's thread
    def connected(self) -> None:
        client = self.conn.client
        client.publish(self.topics.availability, "online", qos=1, retain=True)
        client.subscribe(self.topics.commands(), qos=1)
        with self._lock:
            self._sent.clear()
            self._configs, self._configs_json = {}, {}
        client.subscribe(self.discovery.config_topics(), qos=1)  # (retained from before: to clean up)
        if self.announce:
            client.subscribe(f"{self.discovery.prefix}/status", qos=1)
            self.publish_discovery(force=True)

    def on_message(self, client: Client, userdata: object, msg: MQTTMessage) -> None:
        try:
            self._message(msg.topic, bytes(msg.payload))
        except Exception as exc:  # an exception here would stop paho's network thread
            log.error("mqtt: message on %s: %s: %s", msg.topic, type(exc).__name__, exc)

    def _message(self, topic: str, payload: bytes) -> None:
        stream = stream_of_command(topic, self.topics.base)
        if stream is not None:
            for s in self.conn.listeners:
                if s.stream == stream:
                    s.command(payload)
            return
        d = self.discovery
        if topic == f"{d.prefix}/status":
            if payload.strip() == b"online":  # Home Assistant (re)started: it wants every entity again
                log.info("mqtt: Home Assistant is online: discovery published again")
                self.publish_discovery(force=True)
        elif d.is_ours(topic) and payload:
            with self._lock:
                stale = topic not in self._configs
            if stale:  # retained from before (a stream, label or zone no longer configured)
                self.conn.client.publish(topic, b"", qos=1, retain=True)
                log.info("mqtt: removed the discovery of a gone entity: %s", topic)

    # ------------------------------------------------------------------ the status thread
    def poll(self, summary: Mapping[str, Any], interval: float) -> None:
        if not self.conn.connected.is_set():
            return
        ours = {s.stream for s in self.conn.listeners}
        for s in summary.get("streams", []):
            if s.get("id") not in ours:
                continue
            t = self.topics.stream(s["id"])
            self._value(t.fps, f"{float(s.get('fps', 0.0)):.1f}", interval, step=FPS_STEP)
            self._value(t.accelerator, str(s.get("accelerator", "")), interval)
            self._value(t.fallbacks, str(int(s.get("fallbacks", 0))), interval)
        for tpu in summary.get("edgetpus", []):
            if tpu.get("temperature") is not None:
                self._value(self.topics.temperature(str(tpu["name"])), f"{tpu['temperature']:.1f}", interval, 0.5)
        if self.announce:
            self.publish_discovery(summary=summary)

    def _value(self, topic: str, payload: str, interval: float, step: float = 0.0) -> None:
        now = time.monotonic()
        with self._lock:
            last = self._sent.get(topic)
            if last is not None and now - last[1] < interval:
                if last[0] == payload or (step and _close(last[0], payload, step)):
                    return
            self._sent[topic] = (payload, now)
        self.conn.client.publish(topic, payload, qos=1, retain=True)

    def publish_discovery(self, force: bool = False, summary: Optional[Mapping[str, Any]] = None) -> None:
        """Publish what changed (``force``: everything) and remove what is gone."""
        d = self.discovery
        if not self.announce or not self.conn.connected.is_set():
            return
        configs = d.configs(summary if summary is not None else self.conn.summary(), self._entities())
        texts = {t: json.dumps(c, separators=(",", ":"), sort_keys=True) for t, c in configs.items()}
        with self._lock:
            gone = [t for t in self._configs_json if t not in texts]
            changed = [t for t, j in texts.items() if force or self._configs_json.get(t) != j]
            self._configs, self._configs_json = configs, texts
        client = self.conn.client
        for topic in changed:
            client.publish(topic, texts[topic], qos=1, retain=True)
        for topic in gone:
            client.publish(topic, b"", qos=1, retain=True)
        if changed and not force:
            log.info("mqtt: Home Assistant discovery: %d entities published, %d removed", len(changed), len(gone))

    def _entities(self) -> list[StreamEntities]:
        out = []
        for s in self.conn.listeners:
            scene = s.state.scene
            out.append(StreamEntities(s.stream, scene))
        return out


def _close(a: str, b: str, step: float) -> bool:
    try:
        return abs(float(a) - float(b)) < step
    except ValueError:
        return False
