"""From detections to events, end to end: a camera the test directs, the real detector, a real broker.

An HTTP MJPEG camera (a child process) draws handwritten digits where a control file says
(:mod:`support.stage`); edged decodes it, runs the bundled digits detector, tracks the digits,
counts them in a zone and publishes events, retained state topics and Home Assistant
discovery to Mosquitto on loopback. The test moves a "3" into the zone, out of it and away,
switches detection off and on by MQTT, and reads what a consumer would.
"""

from __future__ import annotations

import json
import signal
import threading
import time
import urllib.request
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from support import wait
from support.client import free_port
from support.daemon import ROOT, Daemon
from support.mosquitto import Broker
from support.stage import IN_ZONE, OUT_OF_ZONE, place, staged_camera, staged_stream

paho = pytest.importorskip("paho.mqtt.client")
pytestmark = pytest.mark.system

DEVICE = "shelf"
SID = "porch"
BASE = f"edged/{DEVICE}/{SID}"
wait_for = partial(wait.wait_for, interval=0.1)


class Listener:
    """Every message under edged/# and homeassistant/#: text, JSON or bytes, with its retain flag."""

    def __init__(self, port: int, name: str = "test-listener") -> None:
        self.messages: list[tuple[str, Any, bool]] = []
        self._lock = threading.Lock()
        self.connected = threading.Event()
        self.client = paho.Client(callback_api_version=paho.CallbackAPIVersion.VERSION2, client_id=name)
        self.client.on_connect = lambda c, *a: (
            c.subscribe([("edged/#", 1), ("homeassistant/#", 1)]),
            self.connected.set(),
        )
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        wait_for(self.connected.is_set, 10, "the listener to connect")

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        payload: Any = bytes(msg.payload)
        if not payload.startswith(b"\xff\xd8"):  # a JPEG stays bytes
            payload = payload.decode()
            try:
                payload = json.loads(payload) if payload[:1] in ("{", "[") else payload
            except ValueError:
                pass
        with self._lock:
            self.messages.append((msg.topic, payload, bool(msg.retain)))

    def last(self, topic: str) -> Any:
        with self._lock:
            got = [p for t, p, _ in self.messages if t == topic]
        return got[-1] if got else None

    def all(self, topic: str) -> list[Any]:
        with self._lock:
            return [p for t, p, _ in self.messages if t == topic]

    def configs(self) -> dict[str, Any]:
        """The discovery configurations as they stand (an empty payload removes one)."""
        out: dict[str, Any] = {}
        with self._lock:
            for t, p, _ in self.messages:
                if t.startswith("homeassistant/") and t.endswith("/config"):
                    if p:
                        out[t] = p
                    else:
                        out.pop(t, None)
        return out

    def publish(self, topic: str, payload: str, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def config(camera_url: str, broker_port: int, tmp: Path, zones: bool = True) -> dict:
    stream = staged_stream(SID, camera_url, broker_port, tmp / "q.sqlite", zones, enter_frames=2, leave_seconds=1.0)
    return {"device": DEVICE, "listen": f"127.0.0.1:{free_port()}", "streams": [stream]}


@pytest.fixture
def rig(tmp_path: Path):
    broker = Broker(tmp_path, free_port())
    broker.start()
    camera, control = staged_camera(tmp_path)
    listener = Listener(broker.port)
    cfg = config(camera.url, broker.port, tmp_path)
    d = Daemon(tmp_path, cfg, env={"STATE_DIRECTORY": str(tmp_path / "state")}, cwd=ROOT)
    made = {"broker": broker, "camera": camera, "listener": listener, "daemon": d, "control": control, "cfg": cfg}
    try:
        yield made
    finally:
        d.kill()
        listener.close()
        camera.kill()
        broker.stop()


def test_occupancy_events_snapshot_and_the_switch(rig, tmp_path: Path) -> None:
    d, sub, control = rig["daemon"], rig["listener"], rig["control"]
    d.wait_ready()
    assert wait_for(lambda: sub.last(f"edged/{DEVICE}/availability") == "online", 20, "availability online")
    # an empty scene: the frame's and the zone's occupancy are OFF, counts 0, detection ON
    for topic in (f"{BASE}/objects/all/occupancy", f"{BASE}/zones/door/3/occupancy"):
        wait_for(lambda t=topic: sub.last(t) == "OFF", 20, f"{topic} OFF")
    assert sub.last(f"{BASE}/detect") == "ON"

    place(control, [IN_ZONE])
    wait_for(lambda: sub.last(f"{BASE}/zones/door/3/occupancy") == "ON", 20, "the 3 in the door zone")
    assert sub.last(f"{BASE}/zones/door/3/count") == "1" and sub.last(f"{BASE}/objects/3/count") == "1"
    assert sub.last(f"{BASE}/zones/door/7/occupancy") == "OFF" and sub.last(f"{BASE}/objects/7/count") == "0"
    events = wait_for(lambda: [e for e in sub.all(f"{BASE}/events") if "door" in e["entered_zones"]], 10, "update")
    first = sub.all(f"{BASE}/events")[0]
    assert first["type"] == "new" and first["label"] == "3" and first["stream"] == SID, first
    track = first["track_id"]
    assert events[-1]["track_id"] == track and events[-1]["id"] == first["id"]
    box = events[-1]["best_box"]
    assert abs(box["xmin"] - 60) < 12 and abs(box["ymax"] - 430) < 12, box
    jpeg = wait_for(lambda: sub.last(f"{BASE}/snapshot"), 10, "the snapshot")
    assert isinstance(jpeg, bytes) and jpeg[:2] == b"\xff\xd8" and jpeg[-2:] == b"\xff\xd9"
    saved = list((tmp_path / "state" / "snapshots" / SID).glob("*.jpg"))
    assert saved and saved[0].read_bytes()[:2] == b"\xff\xd8", saved
    # results carry the track id and the zones
    objs = d.status()["streams"][0]
    assert objs["detect"] is True

    # out of the zone (a jump: a new track), the frame still occupied
    place(control, [OUT_OF_ZONE])
    wait_for(lambda: sub.last(f"{BASE}/zones/door/3/occupancy") == "OFF", 20, "the zone empty again")
    assert sub.last(f"{BASE}/objects/3/occupancy") == "ON"
    assert sub.last(f"{BASE}/zones/door/all/count") == "0"
    ended = wait_for(lambda: [e for e in sub.all(f"{BASE}/events") if e["type"] == "end" and e["id"] == first["id"]],
                     10, "the first event's end")  # fmt: skip
    assert ended[0]["end"] >= ended[0]["start"] and ended[0]["best_score"] >= 0.5, ended

    # detection off by MQTT: everything ends at once, occupancy OFF, and stays so with the 3 in view
    sub.publish(f"{BASE}/detect/set", "OFF")
    wait_for(lambda: sub.last(f"{BASE}/detect") == "OFF", 10, "the switch's state OFF")
    wait_for(lambda: sub.last(f"{BASE}/objects/all/occupancy") == "OFF", 10, "everything ended")
    place(control, [IN_ZONE])
    n = len(sub.all(f"{BASE}/result"))
    wait_for(lambda: d.status()["streams"][0]["detect"] is False, 5, "the status to say detection is off")
    time.sleep(2.0)
    assert len(sub.all(f"{BASE}/result")) <= n + 3  # (at most what was in flight)
    assert sub.last(f"{BASE}/zones/door/3/occupancy") == "OFF"
    sub.publish(f"{BASE}/detect/set", "on")
    wait_for(lambda: sub.last(f"{BASE}/detect") == "ON", 10, "the switch's state ON")
    wait_for(lambda: sub.last(f"{BASE}/zones/door/3/occupancy") == "ON", 20, "the zone occupied again")
    sub.publish(f"{BASE}/detect/set", "maybe")
    assert d.stop() == 0
    assert "must be ON or OFF, not 'MAYBE': ignored" in d.stderr
    wait_for(lambda: sub.last(f"edged/{DEVICE}/availability") == "offline", 10, "availability offline")
    assert "Traceback" not in d.stderr, d.stderr


def test_discovery_follows_home_assistant_and_the_configuration(rig, tmp_path: Path) -> None:
    d, sub, control = rig["daemon"], rig["listener"], rig["control"]
    d.wait_ready()
    place(control, [IN_ZONE])
    node = f"homeassistant/binary_sensor/{DEVICE}"
    wait_for(lambda: f"{node}/{SID}_door_3_occupancy/config" in sub.configs(), 20, "the zone's entity")
    configs = sub.configs()
    cfg = configs[f"{node}/{SID}_door_3_occupancy/config"]
    assert cfg["state_topic"] == f"{BASE}/zones/door/3/occupancy" and cfg["device_class"] == "occupancy"
    assert cfg["availability_topic"] == f"edged/{DEVICE}/availability"
    device = cfg["device"]
    assert device["identifiers"] == [f"edged_{DEVICE}"] and device["manufacturer"] == "edged"
    assert device["sw_version"] and device["model"] and device["configuration_url"].startswith("http://")
    uids = [c["unique_id"] for c in configs.values()]
    assert len(uids) == len(set(uids)), uids  # every entity its own unique id
    assert all(c["device"] == device for c in configs.values())  # one device
    components = {t.split("/")[1] for t in configs}
    assert {"binary_sensor", "sensor", "switch", "image"} <= components, components
    switch = configs[f"homeassistant/switch/{DEVICE}/{SID}_detect/config"]
    assert (switch["command_topic"], switch["state_topic"]) == (f"{BASE}/detect/set", f"{BASE}/detect")
    image = configs[f"homeassistant/image/{DEVICE}/{SID}_snapshot/config"]
    assert image["image_topic"] == f"{BASE}/snapshot" and image["content_type"] == "image/jpeg"
    for name in ("fps", "accelerator", "fallbacks"):
        topic = configs[f"homeassistant/sensor/{DEVICE}/{SID}_{name}/config"]["state_topic"]
        wait_for(lambda t=topic: sub.last(t) is not None, 10, f"a value on {topic}")
    assert sub.last(f"{BASE}/accelerator") == "cpu" and float(sub.last(f"{BASE}/fps")) >= 0

    # Home Assistant restarts and says so: every configuration comes again
    before = len(sub.all(f"{node}/{SID}_door_3_occupancy/config"))
    sub.publish("homeassistant/status", "online")
    wait_for(lambda: len(sub.all(f"{node}/{SID}_door_3_occupancy/config")) > before, 10, "discovery again")

    # the zone leaves the configuration: its entities are removed (an empty retained config)
    d.cfg.write_text(json.dumps(config(rig["camera"].url, rig["broker"].port, tmp_path, zones=False)))
    d.send(signal.SIGHUP)
    wait_for(lambda: f"{node}/{SID}_door_3_occupancy/config" not in sub.configs(), 30, "the zone's entity removed")
    assert f"{node}/{SID}_3_occupancy/config" in sub.configs()  # the frame's stays
    # a late subscriber (Home Assistant starting later) gets no trace of the zone
    late = Listener(rig["broker"].port)
    try:
        wait_for(lambda: f"{node}/{SID}_3_occupancy/config" in late.configs(), 10, "the retained discovery")
        assert not [t for t in late.configs() if "door" in t], late.configs()
    finally:
        late.close()
    # the daemon stops: entities become unavailable (availability offline), their configurations stay
    assert d.stop() == 0
    wait_for(lambda: sub.last(f"edged/{DEVICE}/availability") == "offline", 10, "availability offline")
    assert f"{node}/{SID}_3_occupancy/config" in sub.configs()
    assert "Traceback" not in d.stderr, d.stderr


def test_events_on_the_http_api(rig) -> None:
    d, control = rig["daemon"], rig["control"]
    d.wait_ready()
    got: list[tuple[str, dict]] = []

    def read() -> None:
        with urllib.request.urlopen(f"{d.base}/api/v1/events?types=event", timeout=30) as r:
            kind = None
            for raw in r:
                line = raw.decode().rstrip("\n")
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: ") and kind:
                    got.append((kind, json.loads(line[6:])))
                    if any(e["type"] == "end" for _, e in got):
                        return

    t = threading.Thread(target=read, daemon=True)
    t.start()
    wait_for(lambda: d.status()["event_clients"] >= 1, 10, "the event client to be connected")
    place(control, [IN_ZONE])
    wait_for(lambda: any(e["type"] == "new" for _, e in got), 20, "a new event over SSE")
    place(control, [])
    t.join(30)
    kinds = {k for k, _ in got}
    assert kinds == {"event"}, kinds  # types=event: no results
    types = [e["type"] for _, e in got]
    assert types[0] == "new" and types[-1] == "end", types
    assert len({e["id"] for _, e in got}) == 1 and got[0][1]["label"] == "3"
    code, _, body = d.get("/api/v1/events?types=bogus")
    assert code == 400 and b"unknown type 'bogus'" in body
