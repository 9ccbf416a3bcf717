"""Results to an MQTT broker, store and forward: no QoS 1 result is lost to a broker outage.

**One connection per broker.** The mqtt sinks of the streams that name the same broker
settings (host, port, credentials, TLS, client id, topic prefix, device) share one paho
client, a :class:`Connection` taken from a refcounted registry: one TCP connection, one
retained ``<prefix>/<device>/status``, one Last Will. The connection publishes the status
(``online`` plus the device summary: every stream with its state, model, accelerator and
fps) when it connects, again within a second when a stream's state, model or accelerator
changes or its fps goes to or from zero, and every ``status_interval`` seconds; it says
``offline`` when the last sink closes, and the broker publishes the Last Will (``offline``,
retained) when the connection dies without a goodbye.

**Per stream, store and forward.** ``publish()`` (the inference thread) appends the message
to the stream's on-disk queue (:class:`~edged.sinks.store.MessageStore`) and returns. The
stream's sender thread publishes the oldest messages in order while connected, keeps up to
``WINDOW`` of them in flight, and deletes a message from the queue only once the broker
acknowledged it (PUBACK), in order. Messages in flight when the connection drops are sent
again by paho after it reconnects; what is still queued when the daemon stops is sent after
it starts again. Delivery is at least once: a message the broker got but whose PUBACK was
lost arrives twice.

QoS 0 skips the queue: published at once while connected, dropped (and counted) otherwise.
Optional thinning (:class:`~edged.sinks.thin.Thinner`) leaves results out before either.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import socket
import sqlite3
import ssl
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

from .. import __version__
from ..errors import ConfigError
from ..result import Result
from .base import Sink
from .store import MessageStore
from .thin import Thinner

log = logging.getLogger(__name__)

WINDOW = 20  # messages of one stream published and not yet acknowledged, at most
CLOSE_FLUSH_SECONDS = 1.0  # on close, send what is queued for this long at most (while connected)
KEEPALIVE = 30  # seconds; the broker declares the connection dead after 1.5 times this
RECONNECT_MIN, RECONNECT_MAX = 1, 10  # seconds between connection attempts, doubling
STATUS_POLL = 1.0  # seconds between two looks at the device summary

Summary = Callable[[], Dict[str, Any]]


def default_queue_path(stream: str) -> Path:
    state = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    base = Path(state) if state else Path.home() / ".local" / "state" / "edged"
    return base / f"{stream}.mqtt.sqlite"


# ---------------------------------------------------------------------- the shared connection

_registry: Dict[Tuple[Any, ...], Connection] = {}
_registry_lock = threading.Lock()


def _acquire(sink: MqttSink, password: Optional[str]) -> Connection:
    """The connection for ``sink``'s broker settings: the existing one, or a new one."""
    cfg = sink.cfg
    key = (
        cfg.host,
        cfg.port,
        cfg.username,
        password,
        cfg.tls,
        cfg.ca_file,
        cfg.client_id,
        cfg.topic_prefix.rstrip("/"),
        sink.device,
    )
    with _registry_lock:
        conn = _registry.get(key)
        if conn is None:
            same_broker = [c for c in _registry.values() if (c.host, c.port) == (cfg.host, cfg.port)]
            client_id = cfg.client_id
            if client_id is None:  # the device's name; made unique among this daemon's connections
                taken = {c.client_id for c in same_broker}
                client_id = f"edged-{sink.device}"
                n = 1
                while client_id in taken:
                    client_id = f"edged-{sink.device}-{sink.stream}" + (f"-{n}" if n > 1 else "")
                    n += 1
            conn = Connection(key, cfg, sink.device, client_id, password, sink.stream)
            for other in same_broker:
                # (not when the other only serves this stream: a reload replacing the sink)
                if other.status_topic == conn.status_topic and set(other.stream_ids()) - {sink.stream}:
                    log.warning(
                        "mqtt: streams %s and %s publish to broker %s over separate connections (their "
                        "username, password, TLS or client_id differ): both write %s, and the Last Will of one "
                        "can mark the device offline while the other is up; give them the same settings to share one",
                        ", ".join(other.stream_ids()),
                        sink.stream,
                        conn.where,
                        conn.status_topic,
                    )
                    break
            _registry[key] = conn
        conn.attach(sink)
        return conn


def _describe_connect_error(exc: Optional[BaseException]) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS: the broker's certificate is not trusted ({exc.verify_message or exc.reason}); check ca_file"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed ({exc.reason or exc}); is it a TLS port?"
    if isinstance(exc, socket.gaierror):
        return f"not reachable yet (cannot resolve the host name: {exc.strerror or exc})"
    if isinstance(exc, OSError):
        return f"not reachable yet ({exc.strerror or exc})"
    return "not reachable yet"


class Connection:
    """One paho client, shared by the mqtt sinks with the same broker settings; owns the status topic."""

    def __init__(
        self, key: Tuple[Any, ...], cfg: Any, device: str, client_id: str, password: Optional[str], stream: str
    ) -> None:
        import paho.mqtt.client as mqtt

        self._mqtt = mqtt
        self.key = key
        self.host, self.port = cfg.host, cfg.port
        self.where = f"{cfg.host}:{cfg.port}"
        self.device = device
        self.client_id = client_id
        self.status_topic = f"{cfg.topic_prefix.rstrip('/')}/{device}/status"
        self.status_interval = float(cfg.status_interval)
        self.sinks: Tuple[MqttSink, ...] = ()
        self.summary_fn: Optional[Summary] = None
        self.connected = threading.Event()
        self._stop = threading.Event()
        self._started = False
        self._closed = False
        self._status_thread: Optional[threading.Thread] = None
        self._status_lock = threading.Lock()
        self._status_sent_at: Optional[float] = None
        self._status_shape: Any = None
        self._ever_connected = False
        self._down_since: Optional[float] = time.monotonic()
        self._error_logged: Optional[str] = None  # the connection error said last (said again only if it changes)

        self.client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv311,
            clean_session=True,
        )
        if cfg.username is not None:
            self.client.username_pw_set(cfg.username, password)
        if cfg.tls:
            try:
                self.client.tls_set(ca_certs=cfg.ca_file)
            except (OSError, ValueError) as exc:
                raise ConfigError(f"stream {stream}: mqtt sink: TLS setup failed: {exc}") from None
        self.client.reconnect_delay_set(min_delay=RECONNECT_MIN, max_delay=RECONNECT_MAX)
        # no limit of paho's own: each stream keeps at most WINDOW in flight, the status a few (and
        # paho refuses a change of the limit once connected, when sinks come and go in a reload)
        self.client.max_inflight_messages_set(0)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_connect_fail = self._on_connect_fail

    # ------------------------------------------------------------------ sinks
    def attach(self, sink: MqttSink) -> None:
        self.sinks = (*self.sinks, sink)
        self.status_interval = min(self.status_interval, float(sink.cfg.status_interval))

    def stream_ids(self) -> list[str]:
        return [s.stream for s in self.sinks]

    def bind_summary(self, fn: Summary) -> None:
        self.summary_fn = fn

    def start(self) -> None:
        """Connect (in the background) when the first sink starts."""
        if self._started:
            return
        self._started = True
        self._set_will()
        self.client.connect_async(self.host, self.port, keepalive=KEEPALIVE)
        self.client.loop_start()
        self._status_thread = threading.Thread(
            target=self._status_loop, name=f"mqtt-status-{self.client_id}", daemon=True
        )
        self._status_thread.start()

    def release(self, sink: MqttSink) -> None:
        """Detach ``sink``; the last one says goodbye (offline) and disconnects."""
        with _registry_lock:
            self.sinks = tuple(s for s in self.sinks if s is not sink)
            if self.sinks or self._closed:
                return
            self._closed = True
            if _registry.get(self.key) is self:
                del _registry[self.key]
        self._stop.set()
        if self._status_thread is not None:
            self._status_thread.join(STATUS_POLL + 1.0)
        if self.connected.is_set():
            # a goodbye: the broker then keeps this instead of the Last Will
            try:
                info = self.client.publish(self.status_topic, self._payload("offline"), qos=1, retain=True)
                info.wait_for_publish(0.5)
            except (RuntimeError, ValueError):
                pass
        was_connected = self.connected.is_set()
        self.client.disconnect()
        if self._started:
            # paho's thread may be sleeping (up to 1 s) between two attempts to connect: do not wait
            # for that, it ends by itself (and is a daemon thread)
            stopper = threading.Thread(target=self.client.loop_stop, name="mqtt-stop", daemon=True)
            stopper.start()
            stopper.join(2.0 if was_connected else 0.1)

    # ------------------------------------------------------------------ status
    def summary(self) -> Dict[str, Any]:
        """The device summary bound by the service, else one made of this connection's streams."""
        if self.summary_fn is not None:
            try:
                return dict(self.summary_fn())
            except Exception as exc:  # a status must never take the connection down
                log.debug("mqtt: the device summary failed: %s", exc)
        return {"device": self.device, "version": __version__, "streams": [{"id": s} for s in self.stream_ids()]}

    def _payload(self, state: str, will: bool = False, summary: Optional[Dict[str, Any]] = None) -> str:
        summary = self.summary() if summary is None else summary
        streams = [dict(s) for s in summary.get("streams", [])]
        if state == "offline":
            for s in streams:
                if "fps" in s:
                    s["fps"] = 0.0
                if will:  # composed when connecting: what the streams do when it is published is unknown
                    s["state"] = "unknown"
                elif s.get("state") in ("created", "running"):
                    s["state"] = "stopped"
        payload = {
            "state": state,
            "device": self.device,
            "version": summary.get("version", __version__),
            "streams": streams,
        }
        return json.dumps(payload, separators=(",", ":"))

    @staticmethod
    def _shape(summary: Dict[str, Any]) -> Any:
        """What makes a status worth publishing at once when it changes (fps only to or from zero)."""
        return [
            (s.get("id"), s.get("state"), s.get("model"), s.get("accelerator"), bool(s.get("fps")))
            for s in summary.get("streams", [])
        ]

    def _set_will(self) -> None:
        self.client.will_set(self.status_topic, self._payload("offline", will=True), qos=1, retain=True)

    def publish_status(self) -> None:
        summary = self.summary()
        with self._status_lock:
            self._status_sent_at = time.monotonic()
            self._status_shape = self._shape(summary)
        self.client.publish(self.status_topic, self._payload("online", summary=summary), qos=1, retain=True)

    def _status_loop(self) -> None:
        while not self._stop.wait(STATUS_POLL):
            if not self.connected.is_set():
                continue
            try:
                with self._status_lock:
                    sent_at, shape = self._status_sent_at, self._status_shape
                summary = self.summary()
                # (half a poll early rather than a whole poll late)
                due = sent_at is None or time.monotonic() - sent_at >= self.status_interval - STATUS_POLL / 2
                if due or self._shape(summary) != shape:
                    self.publish_status()
            except Exception as exc:  # pragma: no cover - never let the status thread die
                log.warning("mqtt: publishing the status failed: %s", exc)

    # ------------------------------------------------------------------ paho callbacks (its network thread)
    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        try:
            if reason_code.is_failure:
                hint = ""
                if str(reason_code) in ("Not authorized", "Bad user name or password"):
                    hint = " (check username and password)"
                elif str(reason_code) == "Identifier rejected":
                    hint = " (check client_id)"
                self._say_error(f"refused the connection: {reason_code}{hint}")
                return
            self.publish_status()
            self.connected.set()
            self._error_logged = None
            sinks = self.sinks
            if not self._ever_connected:
                self._ever_connected = True
                log.info(
                    "mqtt: connected to %s as %s: stream%s %s, status on %s",
                    self.where,
                    self.client_id,
                    "s" if len(sinks) != 1 else "",
                    ", ".join(s.stream for s in sinks),
                    self.status_topic,
                )
            else:
                down = time.monotonic() - (self._down_since or time.monotonic())
                log.info(
                    "mqtt: broker %s is back after %.1f s; sending the queued results (%s)",
                    self.where,
                    down,
                    "; ".join(s.backlog() for s in sinks),
                )
            self._down_since = None
            for s in sinks:
                s._connection_up()
        except Exception as exc:  # an exception here would stop paho's network thread
            log.error("mqtt: on connect: %s: %s", type(exc).__name__, exc)

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        try:
            was = self.connected.is_set()
            self.connected.clear()
            for s in self.sinks:
                s._connection_down()
            if was and not self._stop.is_set():
                self._down_since = time.monotonic()
                qos = {s.qos for s in self.sinks}
                meanwhile = {1: "queueing results", 0: "dropping results (QoS 0)"}.get(
                    qos.pop() if len(qos) == 1 else -1, "queueing QoS 1 results, dropping QoS 0 ones"
                )
                log.warning(
                    "mqtt: connection to broker %s lost (%s); %s, reconnecting", self.where, reason_code, meanwhile
                )
            if not self._stop.is_set():
                self._set_will()  # the next connection's Last Will names the streams as they are now
        except Exception as exc:  # pragma: no cover
            log.error("mqtt: on disconnect: %s: %s", type(exc).__name__, exc)

    def _on_connect_fail(self, client: Any, userdata: Any) -> None:
        # paho calls this inside its ``except OSError``: the exception is the one being handled
        exc = sys.exc_info()[1]
        if self._ever_connected and self._error_logged is None and not isinstance(exc, ssl.SSLError):
            return  # reconnecting after a loss, which was said; a refusal or a TLS failure is still said
        self._say_error(_describe_connect_error(exc))

    def _say_error(self, what: str) -> None:
        if what != self._error_logged:
            self._error_logged = what
            log.error("mqtt: broker %s: %s; retrying (streams %s)", self.where, what, ", ".join(self.stream_ids()))


# ---------------------------------------------------------------------- the sink


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
        self.qos = cfg.qos
        self.label = f"mqtt:{stream}"
        self.where = f"{cfg.host}:{cfg.port}"
        self.queue_path = Path(cfg.queue_path) if cfg.queue_path else default_queue_path(stream)
        self.store: Optional[MessageStore] = None
        self.thinner = Thinner.from_config(cfg.thin) if getattr(cfg, "thin", None) is not None else None

        self._metrics: Dict[str, Any] = {}
        self._depth = None
        if metrics is not None:
            for outcome in ("sent", "dropped", "failed", "thinned"):
                self._metrics[outcome] = metrics.publish_total.labels(self.label, outcome)
            self._depth = metrics.publish_queue_depth.labels(self.label)
        self.sent = self.dropped = self.failed = self.thinned = 0  # the same counts, for tests and status

        self._stop = threading.Event()
        self._cv = threading.Condition()
        self._thread: Optional[threading.Thread] = None
        self._dropped_while_down = 0
        self._overflow_logged = False

        password = cfg.password
        if password is None and cfg.password_env:
            password = os.environ.get(cfg.password_env)
            if password is None:
                raise ConfigError(f"stream {stream}: mqtt sink: environment variable {cfg.password_env} is not set")
        self.conn = _acquire(self, password)
        self.status_topic = self.conn.status_topic
        self.client = self.conn.client

    def bind_summary(self, fn: Summary) -> None:
        """The device summary for the retained status (the service binds it; unbound: this connection's streams)."""
        self.conn.bind_summary(fn)

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
            self._thread = threading.Thread(target=self._sender, name=f"{self.stream}-mqtt", daemon=True)
            self._thread.start()
        elif self._depth is not None:
            self._depth.set(0)  # nothing is ever queued at QoS 0
        for c in self._metrics.values():
            c.inc(0)
        self.conn.start()

    def publish(self, result: Result) -> None:
        if self.thinner is not None and not self.thinner.admit(result, time.monotonic()):
            self._count("thinned")
            return
        payload = result.to_json()
        if self.qos == 0:
            if not self.conn.connected.is_set():
                self._count("dropped")
                return
            info = self.client.publish(self.topic, payload, qos=0)
            self._count("sent" if info.rc == self._mqtt.MQTT_ERR_SUCCESS else "dropped")
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
        self.conn.release(self)
        queued = 0
        if self.store is not None:
            queued = len(self.store)
            self.store.close()
        log.info(
            "mqtt %s: closed: %d results sent, %d thinned, %d dropped, %d failed, %d left in the queue",
            self.stream,
            self.sent,
            self.thinned,
            self.dropped,
            self.failed,
            queued,
        )

    # ------------------------------------------------------------------ called by the connection
    def _connection_up(self) -> None:
        self._dropped_while_down = 0
        with self._cv:
            self._cv.notify_all()

    def _connection_down(self) -> None:
        self._overflow_logged = False  # a new outage: say it once again if the queue fills

    def backlog(self) -> str:
        if self.qos == 0:
            return f"{self.stream}: QoS 0, {self.dropped} dropped in all"
        queued = len(self.store) if self.store is not None else 0
        dropped = f", {self._dropped_while_down} dropped (queue full)" if self._dropped_while_down else ""
        return f"{self.stream}: {queued} queued{dropped}"

    # ------------------------------------------------------------------ sending
    def _acked(self, info: Any) -> bool:
        try:
            return bool(info.is_published())
        except (RuntimeError, ValueError):  # not queued by paho; cannot happen for what is kept in flight
            return False

    def _sender(self) -> None:
        """Publish the queue in order; delete only what the broker acknowledged, in order."""
        store = self.store
        assert store is not None
        mqtt = self._mqtt
        connected = self.conn.connected
        inflight: collections.deque[tuple[int, Any]] = collections.deque()  # (row id, MQTTMessageInfo)
        last_id = 0
        flush_until: Optional[float] = None
        while True:
            if self._stop.is_set():
                # stopping (nothing new comes in): while connected, send what is queued for a moment
                if flush_until is None:
                    flush_until = time.monotonic() + (CLOSE_FLUSH_SECONDS if connected.is_set() else 0.0)
                if (not inflight and not store.depth) or time.monotonic() >= flush_until:
                    return
            done_id, n = 0, 0
            while inflight and self._acked(inflight[0][1]):
                done_id, n = inflight.popleft()[0], n + 1
            if n:
                store.delete_upto(done_id)
                self._count("sent", n)
            sent_more = False
            if connected.is_set() and len(inflight) < WINDOW:
                for rid, topic, payload in store.peek(WINDOW - len(inflight), after_id=last_id, reserve=True):
                    info = self.client.publish(topic, payload, qos=1)
                    if info.rc == mqtt.MQTT_ERR_NO_CONN:
                        # the connection just dropped: paho keeps the message and sends it when it is
                        # back (its info then says published); the code is no failure of this message
                        info.rc = mqtt.MQTT_ERR_SUCCESS
                    elif info.rc != mqtt.MQTT_ERR_SUCCESS:
                        # not queued by paho (should not happen: its queue is unbounded); try again later
                        self._count("failed")
                        break
                    inflight.append((rid, info))
                    last_id = rid
                    sent_more = True
            if n or sent_more:
                continue
            if inflight and connected.is_set():
                # wait for the oldest to be acknowledged (paho wakes this at its PUBACK); results that
                # come meanwhile go out after it, within a round trip
                try:
                    inflight[0][1].wait_for_publish(0.2)
                except (RuntimeError, ValueError):
                    time.sleep(0.2)
            else:
                with self._cv:  # new results, or the connection coming back
                    self._cv.wait(0.2)

    # ------------------------------------------------------------------ helpers
    def _count(self, outcome: str, n: int = 1) -> None:
        setattr(self, outcome, getattr(self, outcome) + n)
        metric = self._metrics.get(outcome)
        if metric is not None:
            metric.inc(n)
