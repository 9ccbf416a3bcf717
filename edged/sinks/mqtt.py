"""Results to an MQTT broker, store and forward: no QoS 1 result is lost to a broker outage.

``publish()`` (the inference thread) appends the message to an on-disk queue
(:class:`~edged.sinks.store.MessageStore`) and returns. A sender thread publishes the
oldest messages in order while connected, keeps up to ``WINDOW`` of them in flight, and
deletes a message from the queue only once the broker acknowledged it (PUBACK), in order.
Messages in flight when the connection drops are sent again by paho after it reconnects;
what is still queued when the daemon stops is sent after it starts again. Delivery is at
least once: a message the broker got but whose PUBACK was lost arrives twice.

QoS 0 skips the queue: published at once while connected, dropped (and counted) otherwise.

The retained ``<prefix>/<device>/status`` says ``online`` while connected; the broker
publishes the Last Will (``offline``, retained) when the connection dies without a goodbye.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import socket
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Optional

from .. import __version__
from ..errors import ConfigError
from ..result import Result
from .base import Sink
from .store import MessageStore

log = logging.getLogger(__name__)

WINDOW = 20  # messages published and not yet acknowledged, at most
CLOSE_FLUSH_SECONDS = 1.0  # on close, send what is queued for this long at most (while connected)


def default_queue_path(stream: str) -> Path:
    state = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    base = Path(state) if state else Path.home() / ".local" / "state" / "edged"
    return base / f"{stream}.mqtt.sqlite"


class MqttSink(Sink):
    name = "mqtt"

    def __init__(self, cfg: Any, stream: str, metrics: Any = None) -> None:
        try:
            import paho.mqtt.client as mqtt
        except ImportError:  # pragma: no cover - a dependency
            raise ConfigError(f"stream {stream}: the mqtt sink needs paho-mqtt>=2 (pip install paho-mqtt)") from None
        self._mqtt = mqtt
        self.cfg = cfg
        self.stream = stream
        self.device = cfg.device or socket.gethostname()
        prefix = cfg.topic_prefix.rstrip("/")
        self.topic = f"{prefix}/{self.device}/{stream}/result"
        self.status_topic = f"{prefix}/{self.device}/status"
        self.qos = cfg.qos
        self.label = f"mqtt:{stream}"
        self.where = f"{cfg.host}:{cfg.port}"
        self.queue_path = Path(cfg.queue_path) if cfg.queue_path else default_queue_path(stream)
        self.store: Optional[MessageStore] = None

        self._sent = self._dropped = self._failed = None
        self._depth = None
        if metrics is not None:
            self._sent = metrics.publish_total.labels(self.label, "sent")
            self._dropped = metrics.publish_total.labels(self.label, "dropped")
            self._failed = metrics.publish_total.labels(self.label, "failed")
            self._depth = metrics.publish_queue_depth.labels(self.label)
        self.sent = self.dropped = self.failed = 0  # the same counts, for tests and status

        self._connected = threading.Event()
        self._stop = threading.Event()
        self._cv = threading.Condition()
        self._acked: set[int] = set()
        self._status_mids: set[int] = set()
        self._thread: Optional[threading.Thread] = None
        self._ever_connected = False
        self._down_since: Optional[float] = time.monotonic()
        self._unreachable_logged = False
        self._dropped_while_down = 0
        self._overflow_logged = False

        self.client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=cfg.client_id or f"edged-{self.device}-{stream}",
            protocol=mqtt.MQTTv311,
            clean_session=True,
        )
        password = cfg.password
        if password is None and cfg.password_env:
            password = os.environ.get(cfg.password_env)
            if password is None:
                raise ConfigError(f"stream {stream}: mqtt sink: environment variable {cfg.password_env} is not set")
        if cfg.username is not None:
            self.client.username_pw_set(cfg.username, password)
        if cfg.tls:
            try:
                self.client.tls_set(ca_certs=cfg.ca_file)
            except (OSError, ValueError) as exc:
                raise ConfigError(f"stream {stream}: mqtt sink: TLS setup failed: {exc}") from None
        self.client.max_inflight_messages_set(WINDOW + 5)  # room for the status messages
        self.client.reconnect_delay_set(min_delay=1, max_delay=30)
        self.client.will_set(self.status_topic, self._status("offline"), qos=1, retain=True)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_connect_fail = self._on_connect_fail
        self.client.on_publish = self._on_publish

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        if self.qos == 1:
            try:
                self.store = MessageStore(self.queue_path, self.cfg.queue_max)
            except (OSError, sqlite3.Error) as exc:
                raise ConfigError(f"stream {self.stream}: cannot open the queue {self.queue_path}: {exc}") from None
            if self._depth is not None:
                store = self.store
                self._depth.set_function(lambda: store.depth)
            if len(self.store):
                log.info("mqtt %s: %d queued results from before are sent first", self.stream, len(self.store))
        for c in (self._sent, self._dropped, self._failed):
            if c is not None:
                c.inc(0)
        self.client.connect_async(self.cfg.host, self.cfg.port, keepalive=30)
        self.client.loop_start()
        if self.qos == 1:
            self._thread = threading.Thread(target=self._sender, name=f"{self.stream}-mqtt", daemon=True)
            self._thread.start()

    def publish(self, result: Result) -> None:
        payload = result.to_json()
        if self.qos == 0:
            if not self._connected.is_set():
                self._count("dropped")
                return
            info = self.client.publish(self.topic, payload, qos=0)
            self._count("sent" if info.rc == self._mqtt.MQTT_ERR_SUCCESS else "failed")
            return
        assert self.store is not None, "start() first"
        try:
            dropped = self.store.append(self.topic, payload)
        except Exception:
            self._count("failed")
            raise
        if dropped:
            self._count("dropped", dropped)
            self._dropped_while_down += dropped
            if not self._overflow_logged:
                self._overflow_logged = True
                log.warning(
                    "mqtt %s: queue full (%d results): dropping the oldest until the broker takes them",
                    self.stream,
                    self.store.maxlen,
                )
        with self._cv:
            self._cv.notify_all()

    def close(self) -> None:
        self._stop.set()
        with self._cv:
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(CLOSE_FLUSH_SECONDS + 1.0)
        if self._connected.is_set():
            # a goodbye: the broker then keeps this instead of the Last Will
            try:
                info = self.client.publish(self.status_topic, self._status("offline"), qos=1, retain=True)
                info.wait_for_publish(0.5)
            except (RuntimeError, ValueError):
                pass
        self.client.disconnect()
        self.client.loop_stop()
        if self.store is not None:
            self.store.close()

    # ------------------------------------------------------------------ sending
    def _sender(self) -> None:
        """Publish the queue in order; delete only what the broker acknowledged, in order."""
        store = self.store
        assert store is not None
        inflight: collections.deque[tuple[int, int]] = collections.deque()  # (row id, mid)
        last_id = 0
        flush_until: Optional[float] = None
        while True:
            if self._stop.is_set():
                # stopping (nothing new comes in): while connected, send what is queued for a moment
                if flush_until is None:
                    flush_until = time.monotonic() + (CLOSE_FLUSH_SECONDS if self._connected.is_set() else 0.0)
                if (not inflight and not store.depth) or time.monotonic() >= flush_until:
                    return
            done_id, n = 0, 0
            with self._cv:
                while inflight and inflight[0][1] in self._acked:
                    rid, mid = inflight.popleft()
                    self._acked.discard(mid)
                    done_id, n = rid, n + 1
                if not inflight:
                    self._acked.clear()  # nothing of ours in flight: whatever is there is stale
            progressed = False
            if n:
                store.delete_upto(done_id)
                self._count("sent", n)
                progressed = True
            if self._connected.is_set() and len(inflight) < WINDOW:
                for rid, topic, payload in store.peek(WINDOW - len(inflight), after_id=last_id, reserve=True):
                    info = self.client.publish(topic, payload, qos=1)
                    if info.rc not in (self._mqtt.MQTT_ERR_SUCCESS, self._mqtt.MQTT_ERR_NO_CONN):
                        # not queued by paho (should not happen: its queue is unbounded); try again later
                        self._count("failed")
                        break
                    # MQTT_ERR_NO_CONN: the connection just dropped; paho keeps it and sends it on reconnect
                    inflight.append((rid, info.mid))
                    last_id = rid
                    progressed = True
            if not progressed:
                with self._cv:
                    self._cv.wait(0.2)

    # ------------------------------------------------------------------ paho callbacks (its network thread)
    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            if not self._unreachable_logged:
                self._unreachable_logged = True
                log.error(
                    "mqtt %s: broker %s refused the connection: %s; retrying", self.stream, self.where, reason_code
                )
            return
        info = client.publish(self.status_topic, self._status("online"), qos=1, retain=True)
        with self._cv:  # its PUBACK is handled on this thread, after this returns
            self._status_mids.add(info.mid)
        self._connected.set()
        self._unreachable_logged = False
        queued = len(self.store) if self.store is not None else 0
        if not self._ever_connected:
            self._ever_connected = True
            log.info("mqtt %s: connected to %s, publishing to %s", self.stream, self.where, self.topic)
        else:
            down = time.monotonic() - (self._down_since or time.monotonic())
            dropped = f", {self._dropped_while_down} dropped (queue full)" if self._dropped_while_down else ""
            log.info(
                "mqtt %s: broker %s is back after %.1f s; sending %d queued results%s",
                self.stream,
                self.where,
                down,
                queued,
                dropped,
            )
        self._dropped_while_down = 0
        self._down_since = None
        with self._cv:
            self._cv.notify_all()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        was = self._connected.is_set()
        self._connected.clear()
        self._overflow_logged = False  # a new outage: say it once again if the queue fills
        if was and not self._stop.is_set():
            self._down_since = time.monotonic()
            log.warning(
                "mqtt %s: connection to broker %s lost (%s); queueing results, reconnecting",
                self.stream,
                self.where,
                reason_code,
            )

    def _on_connect_fail(self, client: Any, userdata: Any) -> None:
        if not self._ever_connected and not self._unreachable_logged:
            self._unreachable_logged = True
            log.warning("mqtt %s: broker %s not reachable yet; queueing results, retrying", self.stream, self.where)

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
        with self._cv:
            if mid in self._status_mids:
                self._status_mids.discard(mid)
                return
            self._acked.add(mid)
            self._cv.notify_all()

    # ------------------------------------------------------------------ helpers
    def _status(self, state: str) -> str:
        return json.dumps(
            {"state": state, "device": self.device, "version": __version__, "streams": [self.stream]},
            separators=(",", ":"),
        )

    def _count(self, outcome: str, n: int = 1) -> None:
        setattr(self, outcome, getattr(self, outcome) + n)
        metric = {"sent": self._sent, "dropped": self._dropped, "failed": self._failed}[outcome]
        if metric is not None:
            metric.inc(n)
