"""The doctor's link and temperature checks in the running daemon: metrics, status, MQTT status, log.

A real daemon (``python -m edged run``) and a real Mosquitto; the board is a fake sysfs tree
(the boundary) with a USB Accelerator on a USB 2 link and an M.2 TPU past its first trip point.
The stream runs the bundled CPU model, so no delegate is needed. The tree is then changed
(the TPU cools down) and the daemon's answers follow it.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
from support.client import free_port
from support.daemon import ROOT, Daemon
from support.fakeboard import board
from support.mosquitto import Broker
from support.wait import wait_for

paho = pytest.importorskip("paho.mqtt.client")
pytestmark = pytest.mark.system  # edged and mosquitto in subprocesses

DEVICE = "doctorpi"


class StatusSubscriber:
    """Keeps the device's MQTT status messages."""

    def __init__(self, port: int) -> None:
        self.statuses: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self.client = paho.Client(callback_api_version=paho.CallbackAPIVersion.VERSION2, client_id="doctor-sub")
        self.client.on_connect = lambda c, *a: c.subscribe(f"edged/{DEVICE}/status", qos=1)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self._lock:
            self.statuses.append(json.loads(msg.payload))

    def last(self) -> dict[str, Any] | None:
        with self._lock:
            return self.statuses[-1] if self.statuses else None

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def running(tmp_path: Path):
    sys_r, dev_r = board(tmp_path)
    broker = Broker(tmp_path, free_port())
    broker.start()
    sub = StatusSubscriber(broker.port)
    config = {
        "device": DEVICE,
        "listen": f"127.0.0.1:{free_port()}",
        "streams": [
            {
                "id": "demo",
                "source": {"type": "synthetic", "fps": 5},
                "model": {"path": str(ROOT / "models/digits_int8.tflite")},
                "sinks": [
                    {"type": "mqtt", "port": broker.port, "device": DEVICE, "queue_path": str(tmp_path / "q.sqlite")}
                ],
            }
        ],
    }
    d = Daemon(tmp_path, config, env={"EDGED_SYSFS_ROOT": str(sys_r), "EDGED_DEV_ROOT": str(dev_r)}, cwd=ROOT)
    try:
        d.wait_ready()
        yield d, sys_r, sub
    finally:
        d.stop()
        sub.close()
        broker.stop()


def _checks(d: Daemon) -> dict[tuple[str, str], float]:
    samples = d.metrics()
    return {(dict(k[1])["tpu"], dict(k[1])["check"]): v for k, v in samples.items() if k[0] == "edged_edgetpu_check"}


def test_a_usb2_link_and_a_hot_tpu_are_said_everywhere_and_follow_the_board(running) -> None:
    d, sys_r, sub = running
    # at start, in the log: what is wrong and what to do
    log = wait_for(lambda: d.stderr if "throttled to 125 MHz" in d.stderr else None, 20, "the start warnings")
    assert "Edge TPU usb:0: on a USB 2 link (480 Mb/s)" in log and "-> plug it into a USB 3 port" in log
    assert "Edge TPU pci:0: 91.2 °C: throttled to 125 MHz of 500" in log

    # metrics, read at scrape time
    m = d.metrics()
    assert m[("edged_edgetpu_link_speed_mbps", (("tpu", "usb:0"),))] == 480.0
    assert m[("edged_edgetpu_throttle_celsius", (("tpu", "pci:0"),))] == 85.0
    assert m[("edged_edgetpu_shutdown_celsius", (("tpu", "pci:0"),))] == 110.0
    assert m[("edged_edgetpu_temperature_celsius", (("tpu", "pci:0"),))] == 91.2
    assert _checks(d) == {("usb:0", "usb-link"): 0.0, ("pci:0", "temperature"): 0.0}

    # /api/v1/status and the MQTT status
    warnings = {(w["tpu"], w["check"]): w for w in d.status()["warnings"]}
    assert set(warnings) == {("usb:0", "usb-link"), ("pci:0", "temperature")}
    assert (
        warnings[("pci:0", "temperature")]["status"] == "warning"
        and "cooling" in warnings[("pci:0", "temperature")]["remedy"]
    )

    def mqtt_warnings() -> set[tuple[str, str]] | None:
        last = sub.last()
        return (
            {(w["tpu"], w["check"]) for w in last.get("warnings", [])} if last and last["state"] == "online" else None
        )

    assert wait_for(mqtt_warnings, 20, "an online MQTT status") == set(warnings)

    # the TPU cools down: every answer follows, and the log says it passes again
    (sys_r / "class" / "apex" / "apex_0" / "temp").write_text("52000\n")
    assert _checks(d)[("pci:0", "temperature")] == 1.0
    assert [(w["tpu"], w["check"]) for w in d.status()["warnings"]] == [("usb:0", "usb-link")]
    wait_for(lambda: mqtt_warnings() == {("usb:0", "usb-link")}, 20, "the MQTT status without the temperature")
    wait_for(lambda: "Edge TPU pci:0: temperature check passes again" in d.stderr, 30, "the recovery line")
    # and heats up again: a new warning line (said once per change, not per poll)
    (sys_r / "class" / "apex" / "apex_0" / "temp").write_text("107000\n")
    wait_for(lambda: "107.0 °C, near or past the shutdown point" in d.stderr, 30, "the shutdown warning")
    assert d.stderr.count("on a USB 2 link") == 1
