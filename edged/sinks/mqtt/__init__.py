"""Results to an MQTT broker, store and forward: no QoS 1 result is lost to a broker outage.

**One connection per broker.** The mqtt sinks of the streams that name the same broker
settings (host, port, credentials, TLS, client id, topic prefix, device) share one paho
client, a :class:`~.connection.Connection` handed out by the service's
:class:`~.pool.MqttPool` (which counts its users): one TCP connection, one retained
``<prefix>/<device>/status``, one Last Will. The connection publishes the status (``online``
plus the device summary: every stream with its state, model, accelerator and fps) when it
connects, again within a second when a stream's state, model or accelerator changes or its
fps goes to or from zero, and every ``status_interval`` seconds; it says ``offline`` when the
last sink closes, and the broker publishes the Last Will (``offline``, retained) when the
connection dies without a goodbye. It tells its sinks of connection changes through
:class:`~.connection.ConnectionListener`.

**Per stream, store and forward.** ``publish()`` (the inference thread) appends the message
to the stream's on-disk queue (:class:`~.store.MessageStore`) and returns. The stream's
sender thread publishes the oldest messages in order while connected, keeps up to
``WINDOW`` of them in flight, and deletes a message from the queue only once the broker
acknowledged it (PUBACK), in order. Messages in flight when the connection drops are sent
again by paho after it reconnects; what is still queued when the daemon stops is sent after
it starts again. Delivery is at least once: a message the broker got but whose PUBACK was
lost arrives twice.

**Never silently stopped.** The sender thread and the connection's status thread run under
:class:`~edged.health.GuardedThread` (``mqtt-sender:<stream>``, ``mqtt-status:<client id>``),
reporting to the service's :class:`~edged.health.HealthBoard`: a failure is counted, logged,
marks the daemon unhealthy, and the thread starts again. The queue degrades instead of
blocking (a damaged file moved aside, an unreadable row skipped, a full disk survived: see
:mod:`.store`); a connection the broker keeps closing right after accepting it is said to be,
most likely, a client id used twice.

QoS 0 skips the queue: published at once while connected, dropped (and counted) otherwise.
Optional thinning (:class:`~edged.sinks.thin.Thinner`) leaves results out before either.

Modules: ``pool`` (:class:`MqttPool`), ``connection`` (:class:`Connection`, the
:class:`ConnectionListener` protocol), ``sink`` (:class:`MqttSink`, its :class:`Counts`),
``store`` (:class:`MessageStore`).
"""

from __future__ import annotations

from .connection import Connection, ConnectionListener
from .pool import MqttPool
from .sink import CLOSE_FLUSH_SECONDS, WINDOW, Counts, MqttSink, default_queue_path
from .store import MessageStore

__all__ = [
    "CLOSE_FLUSH_SECONDS",
    "WINDOW",
    "Connection",
    "ConnectionListener",
    "Counts",
    "MessageStore",
    "MqttPool",
    "MqttSink",
    "default_queue_path",
]
