"""The mqtt sink's shared connections and status payloads, without a broker (nothing here connects)."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import pytest

from edged.metrics import Metrics
from edged.result import Class, Result
from edged.sinks.base import SinkContext
from edged.sinks.mqtt.config import MqttSinkConfig as MqttConfig

mqtt = pytest.importorskip("edged.sinks.mqtt")
from edged.sinks.mqtt.state import StreamState  # noqa: E402
from edged.sinks.mqtt.topics import StreamTopics  # noqa: E402


def cfg(tmp_path: Path, sid: str, **over) -> MqttConfig:
    return MqttConfig(device="dev", port=1, queue_path=str(tmp_path / f"{sid}.sqlite"), **over)


def test_a_reload_with_new_credentials_is_no_second_connection_to_warn_about(tmp_path, caplog) -> None:
    pool = mqtt.MqttPool()  # the service's: one for every stream
    old = mqtt.MqttSink(cfg(tmp_path, "a"), SinkContext("a", mqtt=pool))
    new = mqtt.MqttSink(cfg(tmp_path, "a", username="u", password="p"), SinkContext("a", mqtt=pool))  # both, a moment
    old.close()
    new.close()
    assert new.conn is not old.conn and "separate connections" not in caplog.text
    assert not pool.connections()


def test_same_settings_share_one_connection(tmp_path, caplog) -> None:
    pool = mqtt.MqttPool()  # the service's: one for every stream
    a = mqtt.MqttSink(cfg(tmp_path, "a", status_interval=20), SinkContext("a", mqtt=pool))
    b = mqtt.MqttSink(cfg(tmp_path, "b", status_interval=5), SinkContext("b", mqtt=pool))
    other = mqtt.MqttSink(cfg(tmp_path, "c", username="u", password="p"), SinkContext("c", mqtt=pool))
    assert caplog.text.count("separate connections") == 1  # c and a, b would write one status topic
    try:
        assert a.conn is b.conn and other.conn is not a.conn
        assert a.conn.client_id == "edged-dev" and other.conn.client_id == "edged-dev-c"  # unique on the broker
        assert a.conn.status_interval == 5  # the shortest
        assert a.topic == "edged/dev/a/result" and a.status_topic == "edged/dev/status"
        # nothing bound: the status names the streams of this connection
        status = json.loads(a.conn._payload("online"))
        assert status == {
            "state": "online",
            "device": "dev",
            "version": status["version"],
            "streams": [{"id": "a"}, {"id": "b"}],
        }
    finally:
        a.close()
        assert b.conn in pool.connections()  # b still uses it
        b.close()
        other.close()
    assert not pool.connections()


class Listener:
    """A ConnectionListener of the test's own: what the connection tells the sinks attached to it."""

    def __init__(self, stream: str, qos: int = 1) -> None:
        self.stream, self.qos = stream, qos
        self.calls: list[str] = []
        # (a classifier's: no scene; never connected, so it publishes nothing)
        self.state = StreamState(stream, StreamTopics(f"edged/dev/{stream}"), None, threading.Event(), None)

    def command(self, payload: bytes) -> None:
        self.calls.append(f"command {payload.decode()}")

    def connection_up(self) -> None:
        self.calls.append("up")

    def connection_down(self) -> None:
        self.calls.append("down")

    def backlog(self) -> str:
        return f"{self.stream}: 7 queued"


def test_the_connection_tells_its_listeners(tmp_path, caplog) -> None:
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.reasoncodes import ReasonCode

    caplog.set_level(logging.INFO, logger="edged.sinks.mqtt")
    pool = mqtt.MqttPool()
    a, b = Listener("a"), Listener("b", qos=0)
    conn = pool.acquire(cfg(tmp_path, "a"), a, "dev", None)
    assert pool.acquire(cfg(tmp_path, "b"), b, "dev", None) is conn and conn.stream_ids() == ["a", "b"]
    up = ReasonCode(PacketTypes.CONNACK, "Success")
    lost = ReasonCode(PacketTypes.DISCONNECT, "Unspecified error")
    try:  # paho's callbacks, called as its network thread would (nothing connects)
        conn._on_connect(conn.client, None, None, up, None)
        assert conn.connected.is_set()
        conn._on_disconnect(conn.client, None, None, lost, None)
        assert not conn.connected.is_set()
        conn._on_connect(conn.client, None, None, up, None)
    finally:
        pool.release(conn, a)
        assert pool.connections() == [conn]  # b still uses it
        pool.release(conn, b)
    assert not pool.connections()
    assert a.calls == b.calls == ["up", "down", "up"]
    assert "connected to 127.0.0.1:1 as edged-dev: streams a, b, status on edged/dev/status" in caplog.text
    assert "lost (Unspecified error); queueing QoS 1 results, dropping QoS 0 ones, reconnecting" in caplog.text
    assert "sending the queued results (a: 7 queued; b: 7 queued)" in caplog.text
    assert "on connect" not in caplog.text and "on disconnect" not in caplog.text  # no exception in a callback


def test_status_payloads_from_the_device_summary(tmp_path) -> None:
    pool = mqtt.MqttPool()
    a = mqtt.MqttSink(cfg(tmp_path, "a"), SinkContext("a", mqtt=pool))
    summary = {
        "device": "dev",
        "version": "9.9",
        "streams": [
            {"id": "a", "state": "running", "model": "m.tflite", "accelerator": "edgetpu", "fps": 14.9},
            {"id": "b", "state": "failed", "model": "n.tflite", "accelerator": "cpu", "fps": 0.0},
        ],
    }
    pool.bind_summary(lambda: summary)  # as the service does, once
    try:
        online = json.loads(a.conn._payload("online"))
        assert online == {"state": "online", **summary}
        goodbye = json.loads(a.conn._payload("offline"))
        assert [(s["state"], s["fps"]) for s in goodbye["streams"]] == [("stopped", 0.0), ("failed", 0.0)]
        assert summary["streams"][0]["fps"] == 14.9  # the summary itself is left alone
        # only what matters makes a status worth sending at once: fps only to or from zero
        shape = a.conn._shape(summary)
        summary["streams"][0]["fps"] = 12.0
        assert a.conn._shape(summary) == shape
        summary["streams"][0]["accelerator"] = "cpu"
        assert a.conn._shape(summary) != shape

        def broken() -> dict:
            raise RuntimeError("boom")

        pool.bind_summary(broken)  # a failing summary: the streams of the connection instead, no exception
        assert [s["id"] for s in json.loads(a.conn._payload("online"))["streams"]] == ["a"]
    finally:
        a.close()


def test_thinned_and_dropped_are_counted(tmp_path) -> None:
    metrics = Metrics()
    sink = mqtt.MqttSink(cfg(tmp_path, "a", qos=0, thin={"on_change": True}), SinkContext("a", metrics))
    result = Result("a", 0, 0.0, "m", "cpu", "classification", 8, 8, classes=[Class(1, "cat", 0.9)])
    try:
        for _ in range(3):
            sink.publish(result)  # the first passes the thinning, and is dropped: not connected (QoS 0)
    finally:
        sink.close()
    assert (sink.counts.sent, sink.counts.dropped, sink.counts.thinned) == (0, 1, 2)
    value = metrics.registry.get_sample_value
    assert value("edged_publish_total", {"sink": "mqtt:a", "outcome": "thinned"}) == 2
    assert value("edged_publish_total", {"sink": "mqtt:a", "outcome": "dropped"}) == 1
    assert not (tmp_path / "a.sqlite").exists()  # QoS 0: no queue
