"""Network cameras that go away and come back: real servers on loopback, the real daemon.

The HTTP MJPEG server and GStreamer's RTSP server (tests/servers.py) run in their own
processes; they are killed (a camera that reboots), frozen (a camera that loses power or
Wi-Fi: nothing more arrives) and started again on the same port. The daemon runs as
``python -m edged run`` and is observed only from outside: /metrics, /healthz, its log.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable

import pytest
from helpers import scrape
from helpers import wait_for as _wait_for
from servers import MjpegServer, RtspServer, free_port

ROOT = Path(__file__).resolve().parent.parent


def wait_for(pred: Callable[[], Any], timeout: float, what: str) -> Any:
    return _wait_for(pred, timeout, what, interval=0.1)  # each poll is a scrape of the daemon


PASSWORD = "s3cret-Pa55"


class Daemon:
    def __init__(self, tmp_path: Path, streams: list[dict], port: int) -> None:
        self.port = port
        self.log = tmp_path / "edged.log"
        cfg = tmp_path / "edged.yaml"
        cfg.write_text(json.dumps({"listen": f"127.0.0.1:{port}", "streams": streams}))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edged", "run", "--config", str(cfg)],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=self.log.open("w"),
        )  # fmt: skip

    def metrics(self) -> dict[tuple[str, tuple], float]:
        """Every sample of one scrape of /metrics, by (name, sorted labels); empty if it does not answer."""
        try:
            return scrape(self.port)
        except OSError:
            return {}

    def value(self, name: str, **labels: str) -> float:
        return self.metrics().get((name, tuple(sorted(labels.items()))), -1.0)

    def status(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/api/v1/status", timeout=3) as r:
            return json.loads(r.read())

    def healthz(self) -> int:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=3) as r:
            return r.status

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.log.read_text()


def url_stream(sid: str, url: str, models_dir: Path, **source: Any) -> dict:
    return {
        "id": sid,
        "source": {
            "type": "url",
            "url": url,
            "read_timeout_seconds": 1.5,
            "open_timeout_seconds": 1.5,
            "reconnect_min_seconds": 0.2,
            "reconnect_max_seconds": 1.0,
            **source,
        },
        "model": {"path": str(models_dir / "mobilenet_v1_0.25_128_quant.tflite"), "threads": 1},
        "sinks": [{"type": "log", "interval": 5}],
    }


@pytest.fixture
def servers_to_close():
    made: list[Any] = []
    yield made
    for s in made:
        s.close()


@pytest.mark.parametrize("kind", ["mjpeg", "rtsp"])
@pytest.mark.parametrize("fault", ["kill", "freeze"])
def test_camera_lost_and_back(kind: str, fault: str, tmp_path, models_dir, servers_to_close) -> None:
    server = (MjpegServer if kind == "mjpeg" else RtspServer)(free_port(), fps=15, user="admin", password=PASSWORD)
    servers_to_close.append(server)
    server.start()
    d = Daemon(tmp_path, [url_stream("cam", server.url, models_dir)], free_port())
    try:
        processed = lambda: d.value("edged_frames_total", stream="cam", outcome="processed")  # noqa: E731
        wait_for(lambda: processed() >= 10, 30, "results from the camera")
        assert d.value("edged_source_up", stream="cam") == 1
        # the camera goes away: rebooted (connection refused/reset) or frozen (silence)
        server.kill() if fault == "kill" else server.pause()
        wait_for(lambda: d.value("edged_source_up", stream="cam") == 0, 10, "the source to be marked down")
        assert d.healthz() == 200  # the daemon itself is fine
        status = d.status()["streams"][0]
        assert status["source_state"] == "connecting" and status["source_error"], status
        assert "***@127.0.0.1" in status["source"] + status["source_error"] and PASSWORD not in json.dumps(status)
        stalled = processed()
        time.sleep(1.0)
        assert processed() <= stalled + 1  # nothing processed while the camera is gone
        # it comes back on the same address
        if fault == "kill":
            server.start()
        else:
            server.resume()
        wait_for(lambda: d.value("edged_source_up", stream="cam") == 1, 20, "the source to come back")
        wait_for(lambda: processed() >= stalled + 10, 20, "results to resume")
        assert d.value("edged_source_reconnects_total", stream="cam") >= 1
        assert d.value("edged_stream_errors_total", stream="cam", stage="source") >= 1
    finally:
        log = d.stop()
    assert d.proc.returncode == 0, log
    assert "source lost" in log and "is back after" in log, log
    assert "Traceback" not in log, log
    # credentials are used but never logged
    assert PASSWORD not in log, log
    assert "***@127.0.0.1" in log, log


def test_unreachable_camera_does_not_stop_other_streams(tmp_path, models_dir, servers_to_close) -> None:
    port = free_port()
    server = MjpegServer(port, fps=15)
    servers_to_close.append(server)
    demo = {
        "id": "demo",
        "source": {"type": "synthetic", "fps": 15},
        "model": {"path": str(models_dir / "mobilenet_v1_0.25_128_quant.tflite"), "threads": 1},
        "sinks": [],
    }
    d = Daemon(tmp_path, [url_stream("cam", server.url, models_dir), demo], free_port())
    try:
        wait_for(
            lambda: d.value("edged_frames_total", stream="demo", outcome="processed") >= 10,
            30,
            "the other stream's results",
        )
        assert d.value("edged_frames_total", stream="cam", outcome="processed") == 0
        assert d.value("edged_source_up", stream="cam") == 0
        server.start()  # the camera appears later
        wait_for(
            lambda: d.value("edged_frames_total", stream="cam", outcome="processed") >= 5,
            30,
            "the late camera's results",
        )
        assert d.value("edged_source_reconnects_total", stream="cam") == 1
    finally:
        log = d.stop()
    assert d.proc.returncode == 0, log
    assert "cannot open http://127.0.0.1:" in log and "retrying in the background" in log, log
