"""systemd: the unit file (verify, security rating), the notify protocol, the watchdog, reload.

The notify protocol is tested against a real unix datagram socket given to the daemon as
NOTIFY_SOCKET, as systemd does; the daemon runs as ``python -m edged run`` (or, where a
wedged inference must be produced on demand, as a Service in this process).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.client import free_port, get
from support.daemon import ROOT, Daemon
from support.wait import wait_for

UNIT = ROOT / "systemd" / "edged.service"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
DIGITS = str(ROOT / "models" / "digits_int8.tflite")


def need_systemd_analyze() -> str:
    if SYSTEMD_ANALYZE is None:
        if os.environ.get("EDGED_REQUIRE_TOOLS") == "1":
            pytest.fail("systemd-analyze not found (apt-get install systemd) and EDGED_REQUIRE_TOOLS=1")
        pytest.skip("systemd-analyze not found")
    return SYSTEMD_ANALYZE


# ---------------------------------------------------------------------------- the unit


@pytest.mark.system
def test_unit_verifies(tmp_path) -> None:
    tool = need_systemd_analyze()
    # verify checks that ExecStart's program exists: point it at this checkout's edged (the
    # only change; /opt/edged is where deploy/install.sh puts it on a device)
    edged = Path(sys.executable).with_name("edged")
    assert edged.exists(), edged
    text = UNIT.read_text()
    assert "ExecStart=/opt/edged/venv/bin/edged run --config /etc/edged/edged.yaml" in text
    unit = tmp_path / "edged.service"
    unit.write_text(text.replace("/opt/edged/venv/bin/edged", str(edged)))
    r = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    problems = [line for line in (r.stdout + r.stderr).splitlines() if "edged.service" in line]
    assert r.returncode == 0 and not problems, r.stdout + r.stderr
    # and verify does catch a broken unit
    unit.write_text(
        text.replace("/opt/edged/venv/bin/edged", str(edged)).replace("[Service]", "[Service]\nType=sometimes")
    )
    r = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert "failed to parse service type" in (r.stdout + r.stderr).lower()


@pytest.mark.system
def test_unit_is_rated_3_or_better_by_systemd_analyze_security() -> None:
    tool = need_systemd_analyze()
    r = subprocess.run(
        [tool, "security", "--offline=yes", "--threshold=30", "--no-pager", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    m = re.search(r"Overall exposure level for edged\.service: (\d+\.\d+)", r.stdout)
    assert m, r.stdout + r.stderr
    assert float(m.group(1)) <= 3.0 and r.returncode == 0, r.stdout[-2000:]


def test_unit_has_what_the_daemon_relies_on() -> None:
    keys: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            k, _, v = line.partition("=")
            keys.setdefault(k.strip(), []).append(v.strip())
    assert keys["Type"] == ["notify"] and keys["NotifyAccess"] == ["main"]
    assert keys["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert keys["Restart"] == ["on-failure"] and float(keys["WatchdogSec"][0]) > 0
    assert keys["StartLimitBurst"] and keys["StartLimitIntervalSec"]
    # a configuration error (exit 2) is not retried into the start limit
    assert keys["RestartPreventExitStatus"] == ["2"]
    # start-up waits at most for the models and a worker start per TPU (30 s each); stop is ~10 s
    from edged.worker import START_SECONDS

    assert float(keys["TimeoutStartSec"][0]) >= 2 * START_SECONDS + 30
    assert 10 < float(keys["TimeoutStopSec"][0]) <= 30
    # a leak is bounded: memory and tasks, above the measured use (docs/operations.md)
    assert keys["MemoryMax"] == ["512M"] and int(keys["TasksMax"][0]) >= 64
    assert keys["User"] == ["edged"] and keys["StateDirectory"] == ["edged"]
    assert keys["DevicePolicy"] == ["closed"]
    allowed = " ".join(keys["DeviceAllow"])
    for dev in ("char-apex", "char-usb_device", "char-video4linux"):
        assert dev in allowed
    assert keys["CapabilityBoundingSet"] == [""] and keys["NoNewPrivileges"] == ["yes"]
    assert "@system-service" in keys["SystemCallFilter"]


# ---------------------------------------------------------------------------- the protocol


class NotifySocket:
    """A unix datagram socket as systemd's, collecting (time, message) from the daemon."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, dict[str, str]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.messages.append((time.monotonic(), fields))

    def with_key(self, key: str, value: str | None = None) -> list[tuple[float, dict[str, str]]]:
        return [(t, m) for t, m in list(self.messages) if key in m and (value is None or m[key] == value)]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path):
    ns = NotifySocket(tmp_path / "notify.sock")
    yield ns
    ns.close()


def stream(sid: str, tmp: Path, fps: float = 20, seed: int = 0, **extra: Any) -> dict[str, Any]:
    return {
        "id": sid,
        "source": {"type": "synthetic", "fps": fps, "seed": seed},
        "model": {"path": DIGITS},
        "sinks": [{"type": "jsonl", "path": str(tmp / f"{sid}.jsonl")}],
        **extra,
    }


def results(tmp: Path, sid: str) -> list[dict]:
    p = tmp / f"{sid}.jsonl"
    if not p.exists():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.endswith("}")]


@pytest.mark.system
def test_notify_ready_status_watchdog_stopping(tmp_path, notify_socket) -> None:
    port = free_port()
    cfg = {"listen": f"127.0.0.1:{port}", "streams": [stream("a", tmp_path), stream("b", tmp_path, fps=10)]}
    d = Daemon(tmp_path, cfg, env={"NOTIFY_SOCKET": str(notify_socket.path), "WATCHDOG_USEC": "2000000"})
    try:
        t_ready, ready = wait_for(lambda: notify_socket.with_key("READY", "1"), 60, "READY=1")[0]
        # READY comes once every stream has produced a result
        assert results(tmp_path, "a") and results(tmp_path, "b"), "READY=1 before the first results"
        assert "a " in ready["STATUS"] and "b " in ready["STATUS"], ready
        # STATUS= with each stream's frame rate, every few seconds
        wait_for(lambda: len(notify_socket.with_key("STATUS")) >= 2, 15, "a second STATUS=")
        status = notify_socket.with_key("STATUS")[-1][1]["STATUS"]
        rates = dict(re.findall(r"(\w+) (\d+\.\d) fps", status))
        assert set(rates) == {"a", "b"} and 14 < float(rates["a"]) < 26 and 6 < float(rates["b"]) < 14, status
        # WATCHDOG=1 at a quarter of WATCHDOG_USEC (2 s): about every 0.5 s
        pings = wait_for(lambda: (p := notify_socket.with_key("WATCHDOG", "1")) and len(p) >= 6 and p, 10, "pings")
        gaps = [b[0] - a[0] for a, b in zip(pings, pings[1:])]
        assert max(gaps) < 1.0, gaps
        assert d.proc.poll() is None
        d.send(signal.SIGTERM)
        assert d.wait(15) == 0
        stopping = notify_socket.with_key("STOPPING", "1")
        assert stopping and stopping[0][0] > t_ready
    finally:
        d.stop()
    assert "Traceback" not in d.stderr


@pytest.mark.system
def test_ready_is_not_held_back_by_a_camera_that_is_down(tmp_path, notify_socket) -> None:
    dead = free_port()  # nothing listens there
    cam = {
        "id": "cam",
        "source": {"type": "url", "url": f"http://127.0.0.1:{dead}/video.mjpg", "open_timeout_seconds": 1},
        "model": {"path": DIGITS},
        "sinks": [],
    }
    cfg = {"listen": f"127.0.0.1:{free_port()}", "streams": [stream("a", tmp_path), cam]}
    d = Daemon(tmp_path, cfg, env={"NOTIFY_SOCKET": str(notify_socket.path)})
    try:
        _, ready = wait_for(lambda: notify_socket.with_key("READY", "1"), 60, "READY=1")[0]
        assert "cam waiting for its source" in ready["STATUS"], ready
        assert results(tmp_path, "a")
    finally:
        d.stop()


@pytest.mark.system
def test_watchdog_stops_when_an_inference_loop_is_wedged(tmp_path, notify_socket, caplog) -> None:
    """A stream whose inference never returns: the pings stop, the reason is logged once."""
    from edged.config import config_from_dict
    from edged.daemon import Service
    from edged.sdnotify import Notifier

    cfg = config_from_dict({"listen": "127.0.0.1:0", "streams": [stream("a", tmp_path), stream("b", tmp_path)]})
    notifier = Notifier({"NOTIFY_SOCKET": str(notify_socket.path), "WATCHDOG_USEC": "1000000"})
    svc = Service(cfg, notifier=notifier)
    svc.start()
    release = threading.Event()
    try:
        wait_for(lambda: len(notify_socket.with_key("WATCHDOG")) >= 4, 20, "pings")
        # wedge stream b's inference, at the engine: the call never returns until released
        engine = svc.stream("b").engine
        real = engine.submit

        def wedged(*args: Any, **kwargs: Any) -> Any:
            release.wait()
            return real(*args, **kwargs)

        engine.submit = wedged
        wedged_at = time.monotonic()
        n0 = len(results(tmp_path, "a"))
        time.sleep(3.0)  # not synchronisation: the time in which no ping may come, and a goes on
        # stuck after 0.5 s (half of WATCHDOG_USEC); the margin is for a loaded machine
        after = [t for t, _ in notify_socket.with_key("WATCHDOG") if t > wedged_at + 1.5]
        assert not after, f"{len(after)} pings after the wedge"
        assert any("not feeding the systemd watchdog (b stuck" in r.message for r in caplog.records)
        # stream a kept running meanwhile; once b turns again the pings resume
        n = len(results(tmp_path, "a"))
        assert n > n0 + 10, (n0, n)  # 3 s at 20 fps
        engine.submit = real
        release.set()
        resumed = time.monotonic()
        wait_for(lambda: [t for t, _ in notify_socket.with_key("WATCHDOG") if t > resumed], 5, "pings again")
        wait_for(lambda: len(results(tmp_path, "a")) > n, 5, "stream a's results going on")
    finally:
        release.set()
        svc.close()


# ---------------------------------------------------------------------------- reload


def write(cfg_path: Path, cfg: dict) -> None:
    tmp = cfg_path.with_suffix(".new")
    tmp.write_text(yaml.safe_dump(cfg))
    tmp.replace(cfg_path)  # as an editor or Ansible writes it: whole


@pytest.mark.system
def test_sighup_reload_restarts_changed_streams_keeps_the_rest(tmp_path, notify_socket) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cfg = {"listen": f"127.0.0.1:{port}", "streams": [stream("a", tmp_path), stream("b", tmp_path)]}
    d = Daemon(tmp_path, cfg, env={"NOTIFY_SOCKET": str(notify_socket.path)})
    health: list[int] = []
    stop = threading.Event()

    def poll() -> None:  # the listener must answer all the way through
        while not stop.wait(0.05):
            try:
                health.append(get(base, "/healthz", timeout=2)[0])
            except OSError as exc:
                health.append(-1)
                print("health poll failed:", exc)

    try:
        wait_for(lambda: notify_socket.with_key("READY", "1"), 60, "READY=1")
        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        wait_for(lambda: len(results(tmp_path, "b")) > 20, 10, "results of b")

        # 1. b changes (another seed), c is added: b and c (re)start, a keeps running
        cfg["streams"] = [stream("a", tmp_path), stream("b", tmp_path, seed=7), stream("c", tmp_path)]
        write(d.cfg, cfg)
        a_before = len(results(tmp_path, "a"))
        b_before = len(results(tmp_path, "b"))
        d.send(signal.SIGHUP)
        wait_for(lambda: "reload: done" in d.stderr, 30, "the reload")
        wait_for(lambda: len(results(tmp_path, "c")) > 5, 15, "results of c")
        a = results(tmp_path, "a")
        seqs = [r["seq"] for r in a]
        assert seqs == list(range(len(seqs))), "stream a restarted (its sequence numbers began again)"
        assert len(a) > a_before + 5
        b_seqs = [r["seq"] for r in results(tmp_path, "b")]
        assert b_seqs[b_before:].count(0) == 1, "stream b did not restart"
        assert "reload: restarting b; starting c" in d.stderr, d.stderr
        assert notify_socket.with_key("RELOADING", "1") and len(notify_socket.with_key("READY", "1")) >= 2
        st = json.loads(get(base, "/api/v1/status")[2])
        assert [s["id"] for s in st["streams"]] == ["a", "b", "c"]

        # 2. an invalid configuration is refused; everything keeps running
        missing_model = {**stream("b", tmp_path), "model": {"path": "nope.tflite"}}
        missing_file = {**stream("c", tmp_path), "source": {"type": "video", "path": str(tmp_path / "gone.mp4")}}
        for bad, why in (
            ("streams: [\n", "YAML syntax error"),
            (yaml.safe_dump({**cfg, "streams": [stream("a", tmp_path), missing_model]}), "nope.tflite"),
            (yaml.safe_dump({**cfg, "streams": [{**stream("a", tmp_path), "fps": 3}]}), "fps"),
            (yaml.safe_dump({**cfg, "streams": [*cfg["streams"][:2], missing_file]}), "gone.mp4"),
        ):
            d.cfg.write_text(bad)
            n = d.stderr.count("reload refused")
            counts = {s: len(results(tmp_path, s)) for s in "abc"}
            d.send(signal.SIGHUP)
            wait_for(lambda n=n: d.stderr.count("reload refused") > n, 20, "the refusal")
            line = [x for x in d.stderr.splitlines() if "reload refused" in x][-1]
            assert why in line, line
            # every stream goes on: a new result of each within 0.5 s (the results only grow)
            went_on = lambda counts=counts: all(len(results(tmp_path, s)) > counts[s] for s in "abc")  # noqa: E731
            wait_for(went_on, 0.5, lambda counts=counts: f"a new result of each stream (had {counts})")
            assert went_on(), "a stream stopped"
        seqs = [r["seq"] for r in results(tmp_path, "a")]
        assert seqs == list(range(len(seqs)))

        # 3. b removed: it stops, its series leave /metrics; a and c go on
        write(d.cfg, {**cfg, "streams": [stream("a", tmp_path), stream("c", tmp_path)]})
        d.send(signal.SIGHUP)
        wait_for(lambda: d.stderr.count("reload: done") >= 2, 30, "the second reload")
        assert "reload: stopping b" in d.stderr
        n_b = len(results(tmp_path, "b"))
        time.sleep(0.5)  # not synchronisation: the time in which b may write nothing more
        assert len(results(tmp_path, "b")) == n_b
        metrics = get(base, "/metrics")[2].decode()
        assert 'stream="b"' not in metrics and 'stream="a"' in metrics
        assert d.proc.poll() is None
    finally:
        stop.set()
        d.stop()
    assert health and all(code == 200 for code in health), sorted(set(health))
    assert "Traceback" not in d.stderr


@pytest.mark.system
def test_reload_without_a_file_says_so(tmp_path) -> None:
    """``edged run`` with no --config (the demo): SIGHUP is explained, nothing stops."""
    d = Daemon(tmp_path, listen=f"127.0.0.1:{free_port()}")
    try:
        d.wait_ready()
        d.send(signal.SIGHUP)
        wait_for(lambda: "no configuration file to re-read" in d.stderr, 10, "the warning")
        assert d.proc.poll() is None
    finally:
        d.stop()
