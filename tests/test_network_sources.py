"""Network cameras that go away and come back: real servers on loopback, the real daemon.

The HTTP MJPEG server and GStreamer's RTSP server (tests/support/servers.py) run in their own
processes; they are killed (a camera that reboots), frozen (a camera that loses power or
Wi-Fi: nothing more arrives) and started again on the same port. The daemon runs as
``python -m edged run`` and is observed only from outside: /metrics, /healthz, its log.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from support.client import free_port
from support.daemon import ROOT, Daemon
from support.durations import duration
from support.servers import MjpegServer, RtspServer
from support.wait import wait_for

pytestmark = pytest.mark.system  # cameras and the daemon, each in a subprocess

PASSWORD = "s3cret-Pa55"
POLL = 0.1  # seconds between two polls: each is a scrape of the daemon
OUTAGE_SECONDS = duration(1.0, 10.0)  # how long a lost camera is watched for frames that must not come


def start_daemon(tmp_path: Path, streams: list[dict], port: int) -> Daemon:
    return Daemon(tmp_path, {"listen": f"127.0.0.1:{port}", "streams": streams}, cwd=ROOT)


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
    d = start_daemon(tmp_path, [url_stream("cam", server.url, models_dir)], free_port())
    try:
        processed = lambda: d.value("edged_frames_total", stream="cam", outcome="processed")  # noqa: E731
        wait_for(lambda: processed() >= 10, 30, "results from the camera", interval=POLL)
        assert d.value("edged_source_up", stream="cam") == 1
        # the camera goes away: rebooted (connection refused/reset) or frozen (silence)
        server.kill() if fault == "kill" else server.pause()
        source_up = lambda: d.value("edged_source_up", stream="cam")  # noqa: E731
        wait_for(lambda: source_up() == 0, 10, "the source to be marked down", interval=POLL)
        assert d.healthz() == 200  # the daemon itself is fine
        status = d.status()["streams"][0]
        assert status["source_state"] == "connecting" and status["source_error"], status
        assert "***@127.0.0.1" in status["source"] + status["source_error"] and PASSWORD not in json.dumps(status)
        stalled = processed()
        time.sleep(OUTAGE_SECONDS)  # not synchronisation: the outage, in which nothing may be processed
        assert processed() <= stalled + 1  # nothing processed while the camera is gone
        # it comes back on the same address
        if fault == "kill":
            server.start()
        else:
            server.resume()
        wait_for(lambda: source_up() == 1, 20, "the source to come back", interval=POLL)
        wait_for(lambda: processed() >= stalled + 10, 20, "results to resume", interval=POLL)
        assert d.value("edged_source_reconnects_total", stream="cam") >= 1
        assert d.value("edged_stream_errors_total", stream="cam", stage="source") >= 1
    finally:
        d.stop()
    log = d.stderr
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
    d = start_daemon(tmp_path, [url_stream("cam", server.url, models_dir), demo], free_port())
    try:
        wait_for(
            lambda: d.value("edged_frames_total", stream="demo", outcome="processed") >= 10,
            30,
            "the other stream's results",
            interval=POLL,
        )
        assert d.value("edged_frames_total", stream="cam", outcome="processed") == 0
        assert d.value("edged_source_up", stream="cam") == 0
        server.start()  # the camera appears later
        wait_for(
            lambda: d.value("edged_frames_total", stream="cam", outcome="processed") >= 5,
            30,
            "the late camera's results",
            interval=POLL,
        )
        assert d.value("edged_source_reconnects_total", stream="cam") == 1
    finally:
        d.stop()
    log = d.stderr
    assert d.proc.returncode == 0, log
    assert "cannot open http://127.0.0.1:" in log and "retrying in the background" in log, log
