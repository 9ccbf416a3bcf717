"""The Home Assistant harness proven: a real Home Assistant core (support.homeassistant) on a real
mosquitto, and a paho client acting as a device that announces itself by MQTT discovery.

The first run builds Home Assistant's venv (minutes; cached in ${EDGED_CACHE:-~/.cache/edged}),
hence the long timeout.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from support.client import free_port
from support.homeassistant import HomeAssistant
from support.mosquitto import Broker
from support.wait import wait_for

paho = pytest.importorskip("paho.mqtt.client")

BASE = "edged/testdev"
AVAILABILITY = f"{BASE}/status"
DEVICE = {
    "identifiers": ["edged_testdev"],
    "name": "edged testdev",
    "model": "edged test model",
    "sw_version": "1.2.3",
    "manufacturer": "edged project",
    "configuration_url": "http://127.0.0.1:8080/",
}
# component -> (entity_id, its discovery config); all on one device, behind one availability topic
ENTITIES = {
    "binary_sensor": (
        "binary_sensor.edged_testdev_cam_person",
        {"name": "Person", "state_topic": f"{BASE}/cam/person", "payload_on": "ON", "payload_off": "OFF"}
        | {"device_class": "occupancy"},
    ),
    "sensor": (
        "sensor.edged_testdev_cam_count",
        {"name": "Count", "state_topic": f"{BASE}/cam/count", "state_class": "measurement"},
    ),
    "switch": (
        "switch.edged_testdev_cam_detect",
        {"name": "Detect", "state_topic": f"{BASE}/cam/detect", "command_topic": f"{BASE}/cam/detect/set"},
    ),
}


def config_topic(component: str) -> str:
    return f"homeassistant/{component}/edged_testdev/{ENTITIES[component][0].split('.')[1]}/config"


class Device:
    """A paho client publishing as a device would, keeping what it receives on its command topics."""

    def __init__(self, port: int) -> None:
        self.received: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="edged-testdev")
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe(f"{BASE}/+/+/set", 1)

    def _on_message(self, client: object, userdata: object, msg: paho.MQTTMessage) -> None:
        with self.lock:
            self.received.append((msg.topic, msg.payload.decode()))

    def publish(self, topic: str, payload: str | bytes, retain: bool = True) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    def announce(self) -> None:
        for component, (entity_id, config) in ENTITIES.items():
            object_id = entity_id.split(".")[1]
            full = config | {"unique_id": object_id, "object_id": object_id, "availability_topic": AVAILABILITY}
            self.publish(config_topic(component), json.dumps(full | {"device": DEVICE}))

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.mark.system
@pytest.mark.timeout(1800)  # the first run builds the venv
def test_discovered_device_in_home_assistant(tmp_path: Path) -> None:
    broker = Broker(tmp_path, free_port())
    broker.start()
    device = Device(broker.port)
    try:
        with HomeAssistant(tmp_path, broker.port) as ha:
            assert ("online", False) in ha.status, ha.status  # its birth message, not retained
            check_device(ha, device)
            check_restart(ha)
    finally:
        device.close()
        broker.stop()


def check_device(ha: HomeAssistant, device: Device) -> None:
    sensor, count, switch = (ENTITIES[c][0] for c in ("binary_sensor", "sensor", "switch"))
    device.publish(AVAILABILITY, "online")
    device.publish(f"{BASE}/cam/person", "OFF")
    device.publish(f"{BASE}/cam/count", "3")
    device.publish(f"{BASE}/cam/detect", "ON")
    device.announce()
    assert ha.wait_state(sensor, "off")["attributes"]["device_class"] == "occupancy"
    assert ha.wait_state(count, "3")["attributes"]["state_class"] == "measurement"
    ha.wait_state(switch, "on")

    registry = ha.entity_registry()
    entries = [registry[e] for e, _ in ENTITIES.values()]
    assert [e["unique_id"] for e in entries] == [e.split(".")[1] for e, _ in ENTITIES.values()]
    assert {e["platform"] for e in entries} == {"mqtt"}
    assert len({e["device_id"] for e in entries}) == 1 and entries[0]["device_id"]
    dev = ha.devices()[entries[0]["device_id"]]
    assert {k: dev[k] for k in ("name", "model", "sw_version", "manufacturer", "configuration_url")} == {
        k: v for k, v in DEVICE.items() if k != "identifiers"
    }
    assert dev["identifiers"] == [["mqtt", "edged_testdev"]]

    device.publish(f"{BASE}/cam/person", "ON")
    ha.wait_state(sensor, "on")
    device.publish(f"{BASE}/cam/person", "OFF")
    ha.wait_state(sensor, "off")

    ha.call_service("switch", "turn_off", {"entity_id": switch})
    wait_for(lambda: (f"{BASE}/cam/detect/set", "OFF") in device.received, 30, "HA to command OFF")
    assert ha.state(switch)["state"] == "on"  # not optimistic: it has a state topic
    device.publish(f"{BASE}/cam/detect", "OFF")
    ha.wait_state(switch, "off")

    device.publish(AVAILABILITY, "offline")
    for entity_id, _ in ENTITIES.values():
        ha.wait_state(entity_id, "unavailable")
    device.publish(AVAILABILITY, "online")
    ha.wait_state(sensor, "off")

    device.publish(config_topic("sensor"), "")  # an empty retained config removes the entity
    ha.wait_state(count, lambda s: s is None)
    wait_for(lambda: count not in ha.entity_registry(), 30, f"{count} to leave the entity registry")
    assert sensor in ha.entity_registry() and ha.state(sensor)["state"] == "off"


def check_restart(ha: HomeAssistant) -> None:
    """A restart: its will (``offline``: it stops without disconnecting), its birth again, and the
    entities back from the retained configs and states."""
    del ha.status[:]
    ha.restart()
    assert ha.status[:2] == [("offline", False), ("online", False)], ha.status
    ha.wait_state(ENTITIES["binary_sensor"][0], "off")
    ha.wait_state(ENTITIES["switch"][0], "off")
    assert ha.state(ENTITIES["sensor"][0]) is None  # its config was removed: no retained config left


# ---------------------------------------------------------------------- edged itself, seen from Home Assistant

NODE = "shelf"
STREAM = "porch"


@pytest.mark.system
@pytest.mark.timeout(1800)  # the first run builds the venv
def test_edged_sets_itself_up_in_home_assistant(tmp_path: Path) -> None:
    """One mqtt sink and nothing written in Home Assistant: the device and its entities appear
    from discovery alone and follow what the camera sees; the switch turns detection off and
    on; a stopped daemon makes them unavailable; Home Assistant restarting gets them again."""
    from support.daemon import ROOT, Daemon
    from support.stage import staged_camera, staged_stream

    broker = Broker(tmp_path, free_port())
    broker.start()
    camera, control = staged_camera(tmp_path)
    stream = staged_stream(STREAM, camera.url, broker.port, tmp_path / "q.sqlite", leave_seconds=1.0)
    config = {"device": NODE, "listen": f"127.0.0.1:{free_port()}", "streams": [stream]}
    d = Daemon(tmp_path / "edged", config, env={"STATE_DIRECTORY": str(tmp_path / "state")}, cwd=ROOT)
    try:
        with HomeAssistant(tmp_path, broker.port) as ha:
            d.wait_ready()
            check_entities(ha)
            check_scene(ha, control)
            check_switch(ha, control)
            del ha.status[:]
            ha.restart()  # its birth message: edged publishes discovery again
            ha.wait_state(f"binary_sensor.edged_{NODE}_{STREAM}_door_3_occupancy", "on")
            assert d.stop() == 0, d.stderr
            for entity in (
                f"binary_sensor.edged_{NODE}_{STREAM}_door_3_occupancy",
                f"switch.edged_{NODE}_{STREAM}_detect",
            ):
                ha.wait_state(entity, "unavailable")
            assert "Traceback" not in d.stderr, d.stderr
            assert "Home Assistant is online: discovery published again" in d.stderr
    finally:
        d.kill()
        camera.kill()
        broker.stop()


def check_entities(ha: HomeAssistant) -> None:
    prefix = f"edged_{NODE}_{STREAM}"
    wanted = [
        f"binary_sensor.{prefix}_all_occupancy", f"binary_sensor.{prefix}_3_occupancy",
        f"binary_sensor.{prefix}_door_all_occupancy", f"binary_sensor.{prefix}_door_3_occupancy",
        f"sensor.{prefix}_3_count", f"sensor.{prefix}_door_7_count", f"sensor.{prefix}_fps",
        f"sensor.{prefix}_accelerator", f"sensor.{prefix}_fallbacks", f"switch.{prefix}_detect",
        f"image.{prefix}_snapshot",
    ]  # fmt: skip
    for entity in wanted:
        ha.wait_state(entity, lambda s: s is not None and s["state"] != "unavailable", 60)
    assert ha.state(f"binary_sensor.{prefix}_door_3_occupancy")["state"] == "off"
    assert ha.state(f"binary_sensor.{prefix}_door_3_occupancy")["attributes"]["device_class"] == "occupancy"
    assert ha.state(f"sensor.{prefix}_accelerator")["state"] == "cpu"
    assert ha.state(f"switch.{prefix}_detect")["state"] == "on"
    registry = ha.entity_registry()
    devices = {registry[e]["device_id"] for e in wanted}
    assert len(devices) == 1, devices  # one device for the whole edged
    dev = ha.devices()[devices.pop()]
    assert dev["identifiers"] == [["mqtt", f"edged_{NODE}"]] and dev["manufacturer"] == "edged"
    assert dev["name"] == f"edged {NODE}" and dev["sw_version"] and dev["model"]
    assert dev["configuration_url"].startswith("http://")


def check_scene(ha: HomeAssistant, control: Path) -> None:
    from support.stage import IN_ZONE, OUT_OF_ZONE, place

    prefix = f"edged_{NODE}_{STREAM}"
    place(control, [IN_ZONE])  # into the door zone
    ha.wait_state(f"binary_sensor.{prefix}_door_3_occupancy", "on")
    ha.wait_state(f"sensor.{prefix}_door_3_count", "1")
    ha.wait_state(f"image.{prefix}_snapshot", lambda s: s is not None and s["state"] not in ("unknown", "unavailable"))
    place(control, [OUT_OF_ZONE])  # out of the zone, still in view
    ha.wait_state(f"binary_sensor.{prefix}_door_3_occupancy", "off")
    assert ha.state(f"binary_sensor.{prefix}_3_occupancy")["state"] == "on"
    place(control, [])  # gone
    ha.wait_state(f"binary_sensor.{prefix}_all_occupancy", "off")
    ha.wait_state(f"sensor.{prefix}_3_count", "0")
    place(control, [IN_ZONE])
    ha.wait_state(f"binary_sensor.{prefix}_door_3_occupancy", "on")


def check_switch(ha: HomeAssistant, control: Path) -> None:
    prefix = f"edged_{NODE}_{STREAM}"
    ha.call_service("switch", "turn_off", {"entity_id": f"switch.{prefix}_detect"})
    ha.wait_state(f"switch.{prefix}_detect", "off")
    ha.wait_state(f"binary_sensor.{prefix}_door_3_occupancy", "off")  # detection off: every event ends
    ha.call_service("switch", "turn_on", {"entity_id": f"switch.{prefix}_detect"})
    ha.wait_state(f"switch.{prefix}_detect", "on")
    ha.wait_state(f"binary_sensor.{prefix}_door_3_occupancy", "on")  # the 3 is still in the zone


@pytest.mark.system
@pytest.mark.timeout(1800)  # the first run builds the venv
def test_an_edge_tpu_problem_shows_in_home_assistant(tmp_path: Path) -> None:
    """On a board with a USB TPU on a USB 2 link and a throttled M.2 TPU (a fake sysfs tree), Home
    Assistant's Edge TPU problem sensor is on with both warnings as attributes, and goes off when
    the board is mended (the link at 5000 Mb/s, the TPU cooled)."""
    from support.daemon import ROOT, Daemon
    from support.fakeboard import board

    node = "tpupi"
    sys_r, dev_r = board(tmp_path)
    broker = Broker(tmp_path, free_port())
    broker.start()
    stream = {
        "id": "demo",
        "source": {"type": "synthetic", "fps": 5},
        "model": {"path": str(ROOT / "models/digits_int8.tflite")},
        "sinks": [
            {"type": "mqtt", "port": broker.port, "queue_path": str(tmp_path / "q.sqlite"), "status_interval": 2}
        ],
    }
    config = {"device": node, "listen": f"127.0.0.1:{free_port()}", "streams": [stream]}
    env = {"STATE_DIRECTORY": str(tmp_path / "state"), "EDGED_SYSFS_ROOT": str(sys_r), "EDGED_DEV_ROOT": str(dev_r)}
    d = Daemon(tmp_path / "edged", config, env=env, cwd=ROOT)
    problem = f"binary_sensor.edged_{node}_edgetpu_problem"
    try:
        with HomeAssistant(tmp_path, broker.port) as ha:
            d.wait_ready()
            state = ha.wait_state(problem, "on", 60)
            assert state["attributes"]["device_class"] == "problem"
            warnings = {(w["tpu"], w["check"]): w for w in state["attributes"]["warnings"]}
            assert set(warnings) == {("usb:0", "usb-link"), ("pci:0", "temperature")}
            assert "USB 2 link" in warnings[("usb:0", "usb-link")]["message"]
            assert "USB 3 port" in warnings[("usb:0", "usb-link")]["remedy"]
            assert "throttled to 125 MHz" in warnings[("pci:0", "temperature")]["message"]
            ha.wait_state(f"sensor.edged_{node}_edgetpu_pci_0_temperature", lambda s: s and float(s["state"]) == 91.2)

            (sys_r / "bus/usb/devices/2-1/speed").write_text("5000\n")  # replugged into a USB 3 port
            (sys_r / "class/apex/apex_0/temp").write_text("52000\n")  # a fan on the M.2 module
            assert ha.wait_state(problem, "off", 60)["attributes"]["warnings"] == []
            assert "Traceback" not in d.stderr, d.stderr
    finally:
        d.kill()
        broker.stop()
