"""One paho client shared by the mqtt sinks with the same broker settings; it owns the status topic.

A :class:`Connection` is made and handed out by an :class:`~edged.sinks.mqtt.pool.MqttPool`.
It tells the sinks attached to it (each a :class:`ConnectionListener`) when the connection
comes up and goes down, publishes the retained ``<prefix>/<device>/availability`` (plain
``online``; its Last Will ``offline``) and ``<prefix>/<device>/status`` (the device summary),
and leaves the device's other topics and Home Assistant's discovery to its
:class:`~.device.DeviceState`.
"""

from __future__ import annotations

import json
import logging
import socket
import ssl
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Protocol, Tuple

from ... import __version__
from ...errors import ConfigError
from ...health import GuardedThread, HealthBoard
from .device import DeviceState
from .state import StreamState
from .topics import DeviceTopics

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt

    from .config import MqttSinkConfig

log = logging.getLogger("edged.sinks.mqtt")  # the name the log lines have always carried

KEEPALIVE = 30  # seconds; the broker declares the connection dead after 1.5 times this
RECONNECT_MIN, RECONNECT_MAX = 1, 10  # seconds between connection attempts, doubling
STATUS_POLL = 1.0  # seconds between two looks at the device summary
# a connection the broker closes within this many seconds of accepting it, this many times in a row,
# is most likely taken over by another client with the same client id (the broker keeps the newest)
SHORT_SESSION_SECONDS, SHORT_SESSIONS = 5.0, 3

Summary = Callable[[], Dict[str, Any]]


class ConnectionListener(Protocol):
    """What a :class:`Connection` knows of a sink attached to it (an :class:`~edged.sinks.mqtt.MqttSink`).

    ``connection_up`` and ``connection_down`` are called from paho's network thread and must
    return at once; ``backlog`` says what waits to be sent, for the "is back" log line.
    """

    stream: str  # the stream's id
    qos: int  # 0 or 1: what the sink does with results while the connection is down
    state: StreamState  # its retained state topics, and what it offers Home Assistant

    def command(self, payload: bytes) -> None: ...

    def connection_up(self) -> None: ...

    def connection_down(self) -> None: ...

    def backlog(self) -> str: ...


def describe_connect_error(exc: Optional[BaseException]) -> str:
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
        self,
        key: Tuple[Any, ...],
        cfg: MqttSinkConfig,
        device: str,
        client_id: str,
        password: Optional[str],
        stream: str,
        board: Optional[HealthBoard] = None,
    ) -> None:
        import paho.mqtt.client as mqtt

        self._mqtt = mqtt
        self.key = key
        self.host, self.port = cfg.host, cfg.port
        self.where = f"{cfg.host}:{cfg.port}"
        self.device = device
        self.client_id = client_id
        self.topics = DeviceTopics(cfg.topic_prefix, device)
        self.status_topic = self.topics.status
        self.status_interval = float(cfg.status_interval)
        self.listeners: Tuple[ConnectionListener, ...] = ()
        self.summary_fn: Optional[Summary] = None
        self.connected = threading.Event()
        self._stop = threading.Event()
        self._started = False
        self._closed = False
        self._close_lock = threading.Lock()
        self._status_thread: Optional[GuardedThread] = None
        self.board = board if board is not None else HealthBoard()
        self.component = f"mqtt-status:{client_id}"
        self._connected_at = 0.0
        self._short_sessions = 0  # connections closed by the broker right after it accepted them, in a row
        self._taken_over_said = False
        self._status_lock = threading.Lock()
        self._status_sent_at: Optional[float] = None
        self._status_shape: Any = None  # (the status thread's, under its lock)
        self._ever_connected = False
        self._down_since: Optional[float] = time.monotonic()
        self._error_logged: Optional[str] = None  # the connection error said last (said again only if it changes)
        self.client = self._client(cfg, password, stream)
        self.device_state = DeviceState(self, cfg, self.topics)
        self.client.on_message = self.device_state.on_message  # commands, Home Assistant's status

    def _client(self, cfg: MqttSinkConfig, password: Optional[str], stream: str) -> mqtt.Client:
        mqtt = self._mqtt
        client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv311,
            clean_session=True,
        )
        self.client = client
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
        return client

    # ------------------------------------------------------------------ listeners (the pool, under its lock)
    def attach(self, listener: ConnectionListener, status_interval: float) -> None:
        self.listeners = (*self.listeners, listener)
        self.status_interval = min(self.status_interval, float(status_interval))

    def detach(self, listener: ConnectionListener) -> bool:
        """Detach ``listener``; whether others are still attached."""
        self.listeners = tuple(s for s in self.listeners if s is not listener)
        return bool(self.listeners)

    def stream_ids(self) -> list[str]:
        return [s.stream for s in self.listeners]

    def bind_summary(self, fn: Optional[Summary]) -> None:
        self.summary_fn = fn

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Connect (in the background) when the first sink starts."""
        if self._started:
            return
        self._started = True
        self._set_will()
        self.client.connect_async(self.host, self.port, keepalive=KEEPALIVE)
        self.client.loop_start()
        self._status_thread = GuardedThread(
            self.component, self._status_loop, self.board, self._stop, name=f"mqtt-status-{self.client_id}"
        )
        self._status_thread.start()

    def close(self) -> None:
        """Say goodbye (offline) and disconnect; once (the pool calls it when the last sink is released)."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        self._stop.set()
        if self._status_thread is not None:
            self._status_thread.join(STATUS_POLL + 1.0)
            self.board.forget(self.component)
        if self.connected.is_set():
            # a goodbye: the broker then keeps this instead of the Last Will
            try:
                self.client.publish(self.status_topic, self._payload("offline"), qos=1, retain=True)
                info = self.client.publish(self.topics.availability, "offline", qos=1, retain=True)
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

    def _payload(self, state: str, summary: Optional[Dict[str, Any]] = None) -> str:
        summary = self.summary() if summary is None else summary
        streams = [dict(s) for s in summary.get("streams", [])]
        if state == "offline":
            for s in streams:
                if "fps" in s:
                    s["fps"] = 0.0
                if s.get("state") in ("created", "running"):
                    s["state"] = "stopped"
        payload = {
            "state": state,
            "device": self.device,
            "version": summary.get("version", __version__),
            "streams": streams,
        }
        if state == "online" and summary.get("unhealthy"):  # the components that do not work, named
            payload["unhealthy"] = summary["unhealthy"]
        if state == "online" and summary.get("warnings"):  # an Edge TPU on USB 2 or running hot
            payload["warnings"] = summary["warnings"]
        return json.dumps(payload, separators=(",", ":"))

    @staticmethod
    def _shape(summary: Dict[str, Any]) -> Any:
        """What makes a status worth publishing at once when it changes (fps only to or from zero)."""
        streams = [
            (s.get("id"), s.get("state"), s.get("model"), s.get("accelerator"), bool(s.get("fps")))
            for s in summary.get("streams", [])
        ]
        warnings = sorted((w.get("check"), w.get("tpu"), w.get("status")) for w in summary.get("warnings", []))
        return streams, sorted(summary.get("unhealthy", {})), warnings

    def _set_will(self) -> None:
        """The broker says ``offline`` on the availability topic when the connection dies without a goodbye."""
        self.client.will_set(self.topics.availability, "offline", qos=1, retain=True)

    def publish_status(self) -> None:
        summary = self.summary()
        with self._status_lock:
            self._status_sent_at = time.monotonic()
            self._status_shape = self._shape(summary)
        self.client.publish(self.status_topic, self._payload("online", summary=summary), qos=1, retain=True)

    def _status_loop(self) -> None:
        """The status thread (guarded: a failure is reported to the board and it starts again)."""
        while not self._stop.wait(STATUS_POLL):
            if self.connected.is_set():
                with self._status_lock:
                    sent_at, shape = self._status_sent_at, self._status_shape
                summary = self.summary()
                # (half a poll early rather than a whole poll late)
                due = sent_at is None or time.monotonic() - sent_at >= self.status_interval - STATUS_POLL / 2
                if due or self._shape(summary) != shape:
                    self.publish_status()
                self.device_state.poll(summary, self.status_interval)
            self.board.ok(self.component)

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
            self._connected_at = time.monotonic()
            self.connected.set()
            self.publish_status()
            self.device_state.connected()
            self._error_logged = None
            listeners = self.listeners
            if not self._ever_connected:
                self._ever_connected = True
                log.info(
                    "mqtt: connected to %s as %s: stream%s %s, status on %s",
                    self.where,
                    self.client_id,
                    "s" if len(listeners) != 1 else "",
                    ", ".join(s.stream for s in listeners),
                    self.status_topic,
                )
            else:
                down = time.monotonic() - (self._down_since or time.monotonic())
                log.log(
                    logging.DEBUG if self._taken_over_said else logging.INFO,
                    "mqtt: broker %s is back after %.1f s; sending the queued results (%s)",
                    self.where,
                    down,
                    "; ".join(s.backlog() for s in listeners),
                )
            self._down_since = None
            for s in listeners:
                s.connection_up()
        except Exception as exc:  # an exception here would stop paho's network thread
            log.error("mqtt: on connect: %s: %s", type(exc).__name__, exc)

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        try:
            was = self.connected.is_set()
            self.connected.clear()
            for s in self.listeners:
                s.connection_down()
            if was and not self._stop.is_set():
                self._down_since = time.monotonic()
                self._count_short_session(str(reason_code))
                qos = {s.qos for s in self.listeners}
                meanwhile = {1: "queueing results", 0: "dropping results (QoS 0)"}.get(
                    qos.pop() if len(qos) == 1 else -1, "queueing QoS 1 results, dropping QoS 0 ones"
                )
                log.log(
                    logging.DEBUG if self._taken_over_said else logging.WARNING,  # flapping: said by the hint
                    "mqtt: connection to broker %s lost (%s); %s, reconnecting",
                    self.where,
                    reason_code,
                    meanwhile,
                )
        except Exception as exc:  # pragma: no cover
            log.error("mqtt: on disconnect: %s: %s", type(exc).__name__, exc)

    def _count_short_session(self, reason: str) -> None:
        """Connections the broker closes right after accepting them, in a row: once, a hint of a client id taken."""
        if time.monotonic() - self._connected_at >= SHORT_SESSION_SECONDS:
            self._short_sessions = 0
            self._taken_over_said = False  # it held: say it again if it starts again
            return
        self._short_sessions += 1
        if self._short_sessions >= SHORT_SESSIONS and not self._taken_over_said:
            self._taken_over_said = True
            log.error(
                "mqtt: broker %s closed the connection right after accepting it, %d times in a row (%s): another "
                "client may be using the client id %s (another board with the same device:?), and the broker "
                "keeps the newest; set device: or client_id: to tell them apart",
                self.where,
                self._short_sessions,
                reason,
                self.client_id,
            )

    def _on_connect_fail(self, client: Any, userdata: Any) -> None:
        # paho calls this inside its ``except OSError``: the exception is the one being handled
        exc = sys.exc_info()[1]
        if self._ever_connected and self._error_logged is None and not isinstance(exc, ssl.SSLError):
            return  # reconnecting after a loss, which was said; a refusal or a TLS failure is still said
        self._say_error(describe_connect_error(exc))

    def _say_error(self, what: str) -> None:
        if what != self._error_logged:
            self._error_logged = what
            log.error("mqtt: broker %s: %s; retrying (streams %s)", self.where, what, ", ".join(self.stream_ids()))
