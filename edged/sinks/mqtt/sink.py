"""The mqtt sink of one stream: thinning, the QoS 0 path, the on-disk queue and its sender thread."""

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
from typing import TYPE_CHECKING, Any, Dict, Optional

from ...errors import ConfigError
from ...health import GuardedThread, HealthBoard
from ...result import Result
from ..base import SceneReport, Sink, SinkContext
from ..thin import Thinner
from .pool import MqttPool
from .state import StreamState
from .store import MessageStore
from .topics import DeviceTopics, StreamTopics

if TYPE_CHECKING:
    from ...metrics import Metrics
    from .config import MqttSinkConfig

log = logging.getLogger("edged.sinks.mqtt")  # the name the log lines have always carried

WINDOW = 20  # messages of one stream published and not yet acknowledged, at most
CLOSE_FLUSH_SECONDS = 1.0  # on close, send what is queued for this long at most (while connected)

OUTCOMES = ("sent", "dropped", "failed", "thinned")
FAULTS = ("corrupt_file", "bad_row", "disk_full")  # of the on-disk queue (edged_queue_faults_total)


def default_queue_path(stream: str) -> Path:
    state = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    base = Path(state) if state else Path.home() / ".local" / "state" / "edged"
    return base / f"{stream}.mqtt.sqlite"


class Counts:
    """A sink's results by outcome (sent, dropped, failed, thinned): counted here, once.

    Each ``add`` also increments ``edged_publish_total{sink=<label>, outcome=...}`` when there
    are metrics; the numbers are read as attributes (``counts.sent``) by the closing log line
    and by tests.
    """

    def __init__(self, label: str, metrics: Optional[Metrics] = None) -> None:
        self._lock = threading.Lock()
        self._n: Dict[str, int] = dict.fromkeys(OUTCOMES, 0)
        self._metrics: Dict[str, Any] = {}
        self._fault_metrics: Dict[str, Any] = {}
        self.faults: Dict[str, int] = dict.fromkeys(FAULTS, 0)
        if metrics is not None:
            self._metrics = {o: metrics.publish_total.labels(label, o) for o in OUTCOMES}
            self._fault_metrics = {f: metrics.queue_faults.labels(label, f) for f in FAULTS}

    def add(self, outcome: str, n: int = 1) -> None:
        with self._lock:
            self._n[outcome] += n
        metric = self._metrics.get(outcome)
        if metric is not None:
            metric.inc(n)

    def fault(self, fault: str, n: int = 1) -> None:
        """A fault of the on-disk queue (:data:`FAULTS`); a row that cannot be read is a failed result too."""
        with self._lock:
            self.faults[fault] += n
        metric = self._fault_metrics.get(fault)
        if metric is not None:
            metric.inc(n)
        if fault == "bad_row":
            self.add("failed", n)

    def export(self) -> None:
        """Make every outcome's counter appear in /metrics (at 0) before the first result."""
        for metric in (*self._metrics.values(), *self._fault_metrics.values()):
            metric.inc(0)

    @property
    def sent(self) -> int:
        return self._n["sent"]

    @property
    def dropped(self) -> int:
        return self._n["dropped"]

    @property
    def failed(self) -> int:
        return self._n["failed"]

    @property
    def thinned(self) -> int:
        return self._n["thinned"]


class MqttSink(Sink):
    """Results of one stream to ``<prefix>/<device>/<stream>/result``; a :class:`ConnectionListener`."""

    name = "mqtt"

    def __init__(self, cfg: MqttSinkConfig, ctx: SinkContext) -> None:
        stream = ctx.stream
        try:
            import paho.mqtt.client as mqtt
        except ImportError:  # pragma: no cover - a dependency
            raise ConfigError(f"stream {stream}: the mqtt sink needs paho-mqtt>=2 (pip install paho-mqtt)") from None
        self._mqtt = mqtt
        self.cfg = cfg
        self.stream = stream
        self.device = cfg.device or socket.gethostname()
        self.topics = DeviceTopics(cfg.topic_prefix, self.device).stream(stream)
        self.topic = self.topics.result
        self.qos = cfg.qos
        self.label = f"mqtt:{stream}"
        self.where = f"{cfg.host}:{cfg.port}"
        self.queue_path = Path(cfg.queue_path) if cfg.queue_path else default_queue_path(stream)
        self.store: Optional[MessageStore] = None
        self.thinner = Thinner.from_config(cfg.thin) if cfg.thin is not None else None

        self.counts = Counts(self.label, ctx.metrics)
        metrics = ctx.metrics
        self._depth = metrics.publish_queue_depth.labels(self.label) if metrics is not None else None

        self._stop = threading.Event()
        self._cv = threading.Condition()
        self._thread: Optional[GuardedThread] = None
        # the sender thread reports here; a failure of it is counted, logged, makes /healthz 503, and it starts again
        self.board = ctx.health if ctx.health is not None else HealthBoard(metrics)
        self.component = f"mqtt-sender:{stream}"
        self._inflight: collections.deque[tuple[int, Any]] = collections.deque()  # (row id, MQTTMessageInfo)
        self._last_id = 0  # the last row published (a restarted sender goes on from there)
        self._dropped_while_down = 0
        self._overflow_logged = False
        # queued messages up to this id were queued while not connected: sent on the replay topics
        self._replay_upto = 0
        self.switch = ctx.switch

        password = cfg.password
        if password is None and cfg.password_env:
            password = os.environ.get(cfg.password_env)
            if password is None:
                raise ConfigError(f"stream {stream}: mqtt sink: environment variable {cfg.password_env} is not set")
        pool = ctx.mqtt
        self._own_pool: Optional[MqttPool] = None
        if pool is None:  # a sink built outside the daemon (a test, a tool): connections of its own
            pool = self._own_pool = MqttPool()
        self.pool = pool
        self.conn = self.pool.acquire(cfg, self, self.device, password, self.board)
        self.status_topic = self.conn.status_topic
        self.client = self.conn.client
        self.state = StreamState(stream, self.topics, self.client, self.conn.connected, self.switch, ctx.scene)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        if self.qos == 1:
            existed = self.queue_path.exists()
            try:
                self.store = MessageStore(self.queue_path, self.cfg.queue_max, self.counts.fault)
            except (OSError, sqlite3.Error) as exc:
                raise ConfigError(f"stream {self.stream}: cannot open the queue {self.queue_path}: {exc}") from None
            self._replay_upto = self.store.last_id()  # from before this start: no longer the present
            if self._depth is not None:
                store = self.store
                self._depth.set_function(lambda: store.depth)
            if existed and self.store.moved_to is None:
                log.info(
                    "mqtt %s: %d queued results from before found in %s%s",
                    self.stream,
                    len(self.store),
                    self.queue_path,
                    ": sent first" if len(self.store) else "",
                    extra={"stream": self.stream},
                )
            self._thread = GuardedThread(
                self.component, self._sender, self.board, self._stop, name=f"{self.stream}-mqtt"
            )
            self._thread.start()
        elif self._depth is not None:
            self._depth.set(0)  # nothing is ever queued at QoS 0
        self.counts.export()
        if self.switch is not None:
            self.switch.watch(self.state.switched)
        self.conn.start()

    def publish(self, result: Result) -> None:
        if self.thinner is not None and not self.thinner.admit(result, time.monotonic()):
            self.counts.add("thinned")
            return
        self._enqueue(self.topic, result.to_json())

    def scene(self, report: SceneReport) -> None:
        """Events go out in order with the results (queued alike); the state topics carry the present."""
        for ev in report.events:
            self._enqueue(self.topics.events, json.dumps(ev.to_dict(), separators=(",", ":")))
        self.state.update(report)

    def command(self, payload: bytes) -> None:
        """A message on this stream's ``detect/set`` (paho's thread)."""
        self.state.command(payload)

    def _enqueue(self, topic: str, payload: str) -> None:
        if self.qos == 0:
            if not self.conn.connected.is_set():
                self.counts.add("dropped")
                return
            info = self.client.publish(topic, payload, qos=0)
            self.counts.add("sent" if info.rc == self._mqtt.MQTT_ERR_SUCCESS else "dropped")
            return
        assert self.store is not None, "start() first"
        try:
            dropped = self.store.append(topic, payload)
        except Exception:
            self.counts.add("failed")
            raise
        if dropped:
            self.counts.add("dropped", dropped)
            self._dropped_while_down += dropped
            if not self._overflow_logged and not self.store.disk_full:  # (a full disk is said by the store)
                self._overflow_logged = True
                log.warning(
                    "mqtt %s: queue full (%d results): dropping the oldest until the broker takes them",
                    self.stream,
                    self.store.maxlen,
                    extra={"stream": self.stream},
                )
        with self._cv:
            self._cv.notify_all()

    def close(self) -> None:
        if self.switch is not None:
            self.switch.unwatch(self.state.switched)
        self._stop.set()
        with self._cv:
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(CLOSE_FLUSH_SECONDS + 1.0)
            self.board.forget(self.component)
        self.pool.release(self.conn, self)
        if self._own_pool is not None:
            self._own_pool.close()
        queued = 0
        if self.store is not None:
            queued = len(self.store)
            self.store.close()
        c = self.counts
        log.info(
            "mqtt %s: closed: %d results sent, %d thinned, %d dropped, %d failed, %d left in the queue",
            self.stream,
            c.sent,
            c.thinned,
            c.dropped,
            c.failed,
            queued,
            extra={"stream": self.stream},
        )

    # ------------------------------------------------------------------ ConnectionListener (paho's thread)
    def connection_up(self) -> None:
        self._dropped_while_down = 0
        if self.store is not None:
            self._replay_upto = self.store.last_id()  # queued while not connected: replayed, marked
        self.state.republish()
        with self._cv:
            self._cv.notify_all()

    def connection_down(self) -> None:
        self._overflow_logged = False  # a new outage: say it once again if the queue fills

    def backlog(self) -> str:
        if self.qos == 0:
            return f"{self.stream}: QoS 0, {self.counts.dropped} dropped in all"
        queued = len(self.store) if self.store is not None else 0
        dropped = f", {self._dropped_while_down} dropped (queue full)" if self._dropped_while_down else ""
        return f"{self.stream}: {queued} queued{dropped}"

    # ------------------------------------------------------------------ sending
    def _sender(self) -> None:
        """The sender thread (guarded): a failure is also a failed result, for the closing line and the counter."""
        try:
            self._send_loop()
        except BaseException:
            self.counts.add("failed")
            raise

    def _send_loop(self) -> None:
        """Publish the queue in order; delete only what the broker acknowledged, in order."""
        store = self.store
        assert store is not None
        connected = self.conn.connected
        inflight = self._inflight
        flush_until: Optional[float] = None
        while True:
            if self._stop.is_set():
                # stopping (nothing new comes in): while connected, send what is queued for a moment
                if flush_until is None:
                    flush_until = time.monotonic() + (CLOSE_FLUSH_SECONDS if connected.is_set() else 0.0)
                if (not inflight and not store.depth) or time.monotonic() >= flush_until:
                    return
            n = self._forget_acked(store, inflight)
            sent_more = False
            if connected.is_set() and len(inflight) < WINDOW:
                self._last_id, sent_more = self._send_more(store, inflight, self._last_id)
            self.board.ok(self.component)
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

    def _forget_acked(self, store: MessageStore, inflight: collections.deque[tuple[int, Any]]) -> int:
        """Delete from the queue the oldest in flight that the broker acknowledged; how many."""
        done_id, n = 0, 0
        while inflight and self._acked(inflight[0][1]):
            done_id, n = inflight.popleft()[0], n + 1
        if n:
            self.counts.add("sent", n)  # acknowledged: sent, even when deleting them fails
            store.delete_upto(done_id)
        return n

    def _send_more(
        self, store: MessageStore, inflight: collections.deque[tuple[int, Any]], last_id: int
    ) -> tuple[int, bool]:
        """Publish the next queued messages up to WINDOW in flight; the last id published, whether any was."""
        mqtt = self._mqtt
        sent_more = False
        for rid, topic, payload in store.peek(WINDOW - len(inflight), after_id=last_id, reserve=True):
            if rid <= self._replay_upto:
                topic = StreamTopics.replay(topic)
            info = self.client.publish(topic, payload, qos=1)
            if info.rc == mqtt.MQTT_ERR_NO_CONN:
                # the connection just dropped: paho keeps the message and sends it when it is
                # back (its info then says published); the code is no failure of this message
                info.rc = mqtt.MQTT_ERR_SUCCESS
            elif info.rc != mqtt.MQTT_ERR_SUCCESS:
                # not queued by paho (should not happen: its queue is unbounded); try again later
                self.counts.add("failed")
                break
            inflight.append((rid, info))
            last_id = rid
            sent_more = True
        return last_id, sent_more

    @staticmethod
    def _acked(info: Any) -> bool:
        try:
            return bool(info.is_published())
        except (RuntimeError, ValueError):  # not queued by paho; cannot happen for what is kept in flight
            return False
