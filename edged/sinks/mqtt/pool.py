"""The MQTT connections of one daemon, keyed by broker settings: one paho client per broker.

The service owns one :class:`MqttPool` and hands it to every stream's sinks (through
:class:`~edged.sinks.base.SinkContext`); the sinks with the same broker settings (host, port,
credentials, TLS, client id, topic prefix, device) get the same :class:`Connection`. The pool
counts who uses a connection: the last sink to release it closes it (the goodbye status).
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any, Dict, Optional, Tuple

from .connection import Connection, ConnectionListener, Summary

if TYPE_CHECKING:
    from ...health import HealthBoard
    from .config import MqttSinkConfig

log = logging.getLogger("edged.sinks.mqtt")  # the name the log lines have always carried

Key = Tuple[Any, ...]


class MqttPool:
    """The connections of one daemon (or of one sink built outside it). Thread-safe."""

    def __init__(self) -> None:
        self._conns: Dict[Key, Connection] = {}
        self._lock = threading.Lock()
        self._summary: Optional[Summary] = None

    @staticmethod
    def key(cfg: MqttSinkConfig, device: str, password: Optional[str]) -> Key:
        return (
            cfg.host,
            cfg.port,
            cfg.username,
            password,
            cfg.tls,
            cfg.ca_file,
            cfg.client_id,
            cfg.topic_prefix.rstrip("/"),
            device,
            cfg.discovery,
            cfg.discovery_prefix.rstrip("/"),
        )

    def connections(self) -> list[Connection]:
        """The open connections, oldest first."""
        with self._lock:
            return list(self._conns.values())

    def bind_summary(self, fn: Summary) -> None:
        """The device summary for the retained status of every connection (unbound: each its own streams)."""
        with self._lock:
            self._summary = fn
            for conn in self._conns.values():
                conn.bind_summary(fn)

    def acquire(
        self,
        cfg: MqttSinkConfig,
        listener: ConnectionListener,
        device: str,
        password: Optional[str],
        board: Optional[HealthBoard] = None,
    ) -> Connection:
        """The connection for these broker settings, ``listener`` attached: the existing one, or a new one.

        ``board``: where a new connection's status thread reports (the first sink's).
        """
        key = self.key(cfg, device, password)
        stream = listener.stream
        with self._lock:
            conn = self._conns.get(key)
            if conn is None:
                same_broker = [c for c in self._conns.values() if (c.host, c.port) == (cfg.host, cfg.port)]
                client_id = self._client_id(cfg, device, stream, {c.client_id for c in same_broker})
                conn = Connection(key, cfg, device, client_id, password, stream, board)
                conn.bind_summary(self._summary)
                self._warn_separate(conn, same_broker, stream)
                self._conns[key] = conn
            conn.attach(listener, cfg.status_interval)
            return conn

    def release(self, conn: Connection, listener: ConnectionListener) -> None:
        """Detach ``listener`` from ``conn``; the last one's release says goodbye (offline) and disconnects."""
        with self._lock:
            if conn.detach(listener):
                return
            if self._conns.get(conn.key) is conn:
                del self._conns[conn.key]
        conn.close()

    def close(self) -> None:
        """Close every connection still open (none once every sink is closed)."""
        with self._lock:
            conns = list(self._conns.values())
            self._conns.clear()
        for conn in conns:
            conn.close()

    # ------------------------------------------------------------------ helpers (under the lock)
    @staticmethod
    def _client_id(cfg: MqttSinkConfig, device: str, stream: str, taken: set[str]) -> str:
        """The configured client id, else the device's name, made unique among this pool's connections."""
        if cfg.client_id is not None:
            return cfg.client_id
        client_id = f"edged-{device}"
        n = 1
        while client_id in taken:
            client_id = f"edged-{device}-{stream}" + (f"-{n}" if n > 1 else "")
            n += 1
        return client_id

    @staticmethod
    def _warn_separate(conn: Connection, same_broker: list[Connection], stream: str) -> None:
        for other in same_broker:
            # (not when the other only serves this stream: a reload replacing the sink)
            if other.status_topic == conn.status_topic and set(other.stream_ids()) - {stream}:
                log.warning(
                    "mqtt: streams %s and %s publish to broker %s over separate connections (their "
                    "username, password, TLS or client_id differ): both write %s, and the Last Will of one "
                    "can mark the device offline while the other is up; give them the same settings to share one",
                    ", ".join(other.stream_ids()),
                    stream,
                    conn.where,
                    conn.status_topic,
                )
                break
