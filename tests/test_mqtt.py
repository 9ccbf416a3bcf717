"""The MQTT sink against a real broker: mosquitto on loopback, stopped and started again.

The daemon runs as ``python -m edged run`` and is observed from outside: a paho subscriber,
/metrics, its log. A jsonl sink on the same stream is the ground truth of what was
produced: every result in it must arrive over MQTT (at least once), in order. The broker
keeps the subscriber's session (persistence, clean_session=False), so what the daemon
sends while the subscriber is still reconnecting is not lost on the test's side.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable

import pytest
from helpers import wait_for as _wait_for
from prometheus_client.parser import text_string_to_metric_families
from servers import free_port

ROOT = Path(__file__).resolve().parent.parent
MOSQUITTO = shutil.which("mosquitto") or next((p for p in ("/usr/sbin/mosquitto",) if os.path.exists(p)), None)
OUTAGE_SECONDS = 8.0  # how long the broker is away in the outage test
LOAD_SECONDS = 20.0  # the load test's duration
LOAD_FPS = 200  # results per second in the load test
DEVICE = "testdev"
SID = "cam"

paho = pytest.importorskip("paho.mqtt.client")
pytestmark = pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto not installed (apt-get install mosquitto)")


def wait_for(pred: Callable[[], Any], timeout: float, what: str) -> Any:
    return _wait_for(pred, timeout, what, interval=0.1)


class Broker:
    """mosquitto in the foreground on 127.0.0.1:port; its sessions persist across stop/start."""

    def __init__(self, tmp_path: Path, port: int) -> None:
        self.port = port
        self.dir = tmp_path / "broker"
        self.dir.mkdir(exist_ok=True)
        self.conf = self.dir / "mosquitto.conf"
        lines = [
            f"listener {port} 127.0.0.1",
            "allow_anonymous true",
            "persistence true",
            f"persistence_location {self.dir}/",
            "max_queued_messages 100000",
            "log_dest stderr",
        ]
        if os.geteuid() == 0:
            lines.append("user root")  # stay root: the persistence directory is the test's
        self.conf.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=(self.dir / "log").open("a")
        )
        import socket

        def accepting() -> bool:
            assert self.proc is not None and self.proc.poll() is None, (self.dir / "log").read_text()
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return True
            except OSError:
                return False

        wait_for(accepting, 10, "mosquitto to listen")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # saves its sessions
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


class Subscriber:
    """A paho client with a persistent session, keeping every message of edged/#."""

    def __init__(self, port: int, name: str = "test-sub") -> None:
        self.messages: list[tuple[str, dict, bool]] = []
        self._lock = threading.Lock()
        self.client = paho.Client(
            callback_api_version=paho.CallbackAPIVersion.VERSION2, client_id=name, clean_session=False
        )
        self.client.reconnect_delay_set(min_delay=1, max_delay=1)
        self.connected = threading.Event()
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda *a: self.connected.clear()
        self.client.on_message = self._on_message
        self.client.connect_async("127.0.0.1", port, keepalive=10)
        self.client.loop_start()
        wait_for(self.connected.is_set, 15, "the subscriber to connect")

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        client.subscribe("edged/#", qos=1)
        self.connected.set()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self._lock:
            self.messages.append((msg.topic, json.loads(msg.payload), bool(msg.retain)))

    def results(self) -> list[dict]:
        with self._lock:
            return [p for t, p, _ in self.messages if t == f"edged/{DEVICE}/{SID}/result"]

    def statuses(self) -> list[tuple[dict, bool]]:
        with self._lock:
            return [(p, r) for t, p, r in self.messages if t == f"edged/{DEVICE}/status"]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Daemon:
    def __init__(self, cfg: Path, port: int, log: Path) -> None:
        self.port = port
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edged", "run", "--config", str(cfg)],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log.open("a"),
        )  # fmt: skip

    def value(self, name: str, **labels: str) -> float:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=3) as r:
                text = r.read().decode()
        except OSError:
            return -1.0
        want = tuple(sorted(labels.items()))
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                if s.name == name and tuple(sorted(s.labels.items())) == want:
                    return s.value
        return -1.0

    def stop(self, sig: int = signal.SIGTERM) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.log.read_text()


def write_config(tmp_path: Path, broker_port: int, source: dict, model: str, **mqtt: Any) -> tuple[Path, int]:
    port = free_port()
    cfg = tmp_path / "edged.yaml"
    sink = {
        "type": "mqtt",
        "port": broker_port,
        "device": DEVICE,
        "queue_path": str(tmp_path / "queue.sqlite"),
        **mqtt,
    }
    stream = {
        "id": SID,
        "source": source,
        "model": {"path": model, "threads": 1},
        "sinks": [sink, {"type": "jsonl", "path": str(tmp_path / "results.jsonl")}, {"type": "log", "interval": 10}],
    }
    cfg.write_text(json.dumps({"listen": f"127.0.0.1:{port}", "streams": [stream]}))
    return cfg, port


def images_config(tmp_path: Path, broker_port: int, models_dir: Path, images_dir: Path, **mqtt: Any):
    source = {"type": "images", "path": str(images_dir), "fps": 20, "loop": True}
    return write_config(tmp_path, broker_port, source, str(models_dir / "mobilenet_v1_0.25_128_quant.tflite"), **mqtt)


def produced(tmp_path: Path) -> list[tuple[int, float]]:
    path = tmp_path / "results.jsonl"
    if not path.exists():
        return []
    return [(r["seq"], r["timestamp"]) for r in map(json.loads, path.read_text().splitlines())]


def first_arrivals(sub: Subscriber) -> tuple[list[tuple[int, float]], int]:
    """The results received, each once in the order it first arrived, and the number of duplicates."""
    seen: set = set()
    order = []
    for r in sub.results():
        key = (r["seq"], r["timestamp"])
        if key not in seen:
            seen.add(key)
            order.append(key)
    return order, len(sub.results()) - len(order)


def assert_all_delivered(tmp_path: Path, sub: Subscriber, skip: int = 0, timeout: float = 20) -> int:
    """Every produced result (but the first ``skip``) arrived, in order, nothing else; returns the duplicates."""
    want = produced(tmp_path)[skip:]
    assert want, "nothing was produced"
    try:
        wait_for(lambda: set(want) <= set(first_arrivals(sub)[0]), timeout, f"all {len(want)} results over MQTT")
    except AssertionError:
        pass  # said below, with what is missing
    got, dups = first_arrivals(sub)
    missing = sorted(set(want) - set(got))
    assert not missing, f"{len(missing)} of {len(want)} results lost, e.g. {missing[:5]}; received {got[:3]}..."
    if got != want:
        i = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
        raise AssertionError(
            f"results arrived out of order, or ones not in the jsonl file: first difference at {i} "
            f"of {len(got)} received / {len(want)} produced: got {got[max(0, i - 2) : i + 3]}, "
            f"want {want[max(0, i - 2) : i + 3]}"
        )
    print(f"{len(want)} results delivered, {dups} duplicates")
    return dups


@pytest.fixture
def env(tmp_path):
    """A broker (started), a subscriber, and everything started stopped at the end."""
    made: dict[str, Any] = {"broker": Broker(tmp_path, free_port())}
    made["broker"].start()
    made["sub"] = Subscriber(made["broker"].port)
    yield made
    for d in made.get("daemons", []):
        d.stop(signal.SIGKILL)
    made["sub"].close()
    made["broker"].stop()


def start_images_daemon(tmp_path, models_dir, images_dir, env) -> tuple[Any, Any, Daemon]:
    """The daemon on the looping images stream, publishing to the test's broker."""
    broker, sub = env["broker"], env["sub"]
    cfg, port = images_config(tmp_path, broker.port, models_dir, images_dir)
    d = Daemon(cfg, port, tmp_path / "edged.log")
    env["daemons"] = [d]
    return broker, sub, d


def test_results_arrive_in_order_with_schema(tmp_path, models_dir, images_dir, env) -> None:
    broker, sub, d = start_images_daemon(tmp_path, models_dir, images_dir, env)
    wait_for(lambda: len(sub.results()) >= 20, 60, "20 results over MQTT")
    r = sub.results()[0]
    for key in ("schema", "stream", "seq", "timestamp", "model", "accelerator", "task", "frame", "latency_ms"):
        assert key in r, r
    assert r["schema"] == 1 and r["stream"] == SID and r["task"] == "classification" and "classes" in r, r
    assert r["model"] == "mobilenet_v1_0.25_128_quant.tflite"
    seqs = [x["seq"] for x in sub.results()]
    assert seqs == sorted(seqs)
    wait_for(lambda: d.value("edged_publish_total", sink=f"mqtt:{SID}", outcome="sent") >= 20, 10, "sent counted")
    assert d.value("edged_publish_total", sink=f"mqtt:{SID}", outcome="dropped") == 0
    depth = d.value("edged_publish_queue_depth", sink=f"mqtt:{SID}")
    assert 0 <= depth < 40, depth  # with the broker up, the queue holds no more than what is in flight
    log = d.stop()
    assert d.proc.returncode == 0, log
    assert_all_delivered(tmp_path, sub)
    assert "Traceback" not in log, log
    # a clean stop says goodbye: the retained status is offline
    wait_for(lambda: sub.statuses() and sub.statuses()[-1][0]["state"] == "offline", 10, "the offline status")


def test_broker_outage_loses_nothing(tmp_path, models_dir, images_dir, env) -> None:
    broker, sub, d = start_images_daemon(tmp_path, models_dir, images_dir, env)
    wait_for(lambda: len(sub.results()) >= 10, 60, "results over MQTT")
    broker.stop()
    time.sleep(OUTAGE_SECONDS)
    depth = d.value("edged_publish_queue_depth", sink=f"mqtt:{SID}")
    assert depth >= OUTAGE_SECONDS * 20 * 0.5, depth  # queued on disk meanwhile
    broker.start()
    wait_for(lambda: d.value("edged_publish_queue_depth", sink=f"mqtt:{SID}") < 20, 30, "the queue to drain")
    log = d.stop()
    assert d.proc.returncode == 0, log
    dups = assert_all_delivered(tmp_path, sub)
    print(f"outage of {OUTAGE_SECONDS} s: {dups} duplicates")
    assert log.count("connection to broker") == 1 and log.count("is back after") == 1, log
    assert "Traceback" not in log, log


def test_daemon_restart_while_broker_down(tmp_path, models_dir, images_dir, env) -> None:
    broker, sub = env["broker"], env["sub"]
    cfg, port = images_config(tmp_path, broker.port, models_dir, images_dir)
    d = Daemon(cfg, port, tmp_path / "edged.log")
    env["daemons"] = [d]
    wait_for(lambda: len(sub.results()) >= 10, 60, "results over MQTT")
    broker.stop()
    time.sleep(3)
    log = d.stop()
    assert d.proc.returncode == 0, log
    with sqlite3.connect(str(tmp_path / "queue.sqlite")) as db:
        queued = db.execute("SELECT COUNT(*) FROM queue").fetchone()[0]
    assert queued >= 20, queued  # the daemon stopped with results still queued on disk
    broker.start()
    d2 = Daemon(cfg, port, tmp_path / "edged.log")
    env["daemons"].append(d2)
    before = len(produced(tmp_path))
    wait_for(lambda: len(produced(tmp_path)) >= before + 20, 60, "the restarted daemon's results")
    wait_for(lambda: d2.value("edged_publish_queue_depth", sink=f"mqtt:{SID}") < 20, 30, "the queue to drain")
    log = d2.stop()
    assert d2.proc.returncode == 0, log
    assert_all_delivered(tmp_path, sub)
    assert f"{queued} queued results from before" in log, log


def test_queue_bound_drops_oldest(tmp_path, models_dir, images_dir, env) -> None:
    broker, sub = env["broker"], env["sub"]
    broker.stop()  # the subscriber's session stays in the broker
    cfg, port = images_config(tmp_path, broker.port, models_dir, images_dir, queue_max=50)
    d = Daemon(cfg, port, tmp_path / "edged.log")
    env["daemons"] = [d]
    label = f"mqtt:{SID}"
    wait_for(lambda: d.value("edged_publish_total", sink=label, outcome="dropped") >= 30, 60, "drops")
    assert d.value("edged_publish_queue_depth", sink=label) == 50
    broker.start()
    wait_for(lambda: d.value("edged_publish_total", sink=label, outcome="sent") >= 60, 60, "sending again")
    dropped = int(d.value("edged_publish_total", sink=label, outcome="dropped"))
    log = d.stop()
    assert d.proc.returncode == 0, log
    # exactly `dropped` results are gone, each the oldest queued at the time; all others arrive, in order
    want = produced(tmp_path)
    wait_for(lambda: len(first_arrivals(sub)[0]) >= len(want) - dropped, 20, "the results kept")
    got = first_arrivals(sub)[0]
    missing = [k for k in want if k not in set(got)]
    assert len(missing) == dropped, (len(missing), dropped)
    assert got == [k for k in want if k not in set(missing)]  # in order, nothing else
    newest_kept = len(want) - want.index(missing[-1]) - 1
    assert newest_kept >= 50, newest_kept  # at least the newest 50 of the outage, and every later one
    assert log.count("queue full") == 1, log
    assert "not reachable yet" in log, log


def test_status_online_and_last_will(tmp_path, models_dir, images_dir, env) -> None:
    broker, sub, d = start_images_daemon(tmp_path, models_dir, images_dir, env)
    wait_for(lambda: len(sub.results()) >= 3, 60, "results over MQTT")
    # a client that comes later gets the retained status
    late = Subscriber(broker.port, "late-sub")
    try:
        wait_for(late.statuses, 10, "the retained status")
        status, retained = late.statuses()[0]
        assert retained and status["state"] == "online", status
        assert status["device"] == DEVICE and status["streams"] == [SID] and status["version"], status
    finally:
        late.close()
    d.stop(signal.SIGKILL)
    wait_for(lambda: sub.statuses() and sub.statuses()[-1][0]["state"] == "offline", 10, "the Last Will")
    late = Subscriber(broker.port, "late-sub-2")
    try:
        wait_for(late.statuses, 10, "the retained status")
        status, retained = late.statuses()[-1]
        assert retained and status["state"] == "offline", status
    finally:
        late.close()


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
def test_load_flat_memory(tmp_path, env) -> None:
    broker, sub = env["broker"], env["sub"]
    source = {"type": "synthetic", "fps": LOAD_FPS, "width": 160, "height": 120}
    cfg, port = write_config(tmp_path, broker.port, source, str(ROOT / "models" / "digits_int8.tflite"))
    d = Daemon(cfg, port, tmp_path / "edged.log")
    env["daemons"] = [d]
    label = f"mqtt:{SID}"
    wait_for(lambda: len(sub.results()) >= 10, 60, "results over MQTT")
    t0 = time.monotonic()
    time.sleep(5)
    rss5 = _rss_mb(d.proc.pid)
    time.sleep(max(0.0, LOAD_SECONDS - (time.monotonic() - t0)))
    rss_end = _rss_mb(d.proc.pid)
    processed = d.value("edged_frames_total", stream=SID, outcome="processed")
    depth = d.value("edged_publish_queue_depth", sink=label)
    sent = d.value("edged_publish_total", sink=label, outcome="sent")
    print(f"load: {processed:.0f} results, {sent:.0f} sent, depth {depth:.0f}, RSS {rss5:.1f} -> {rss_end:.1f} MB")
    assert processed >= LOAD_FPS * LOAD_SECONDS * 0.5, processed  # the load was there
    assert depth <= 50, depth  # kept up: nothing piles up
    assert rss_end - rss5 < 20, (rss5, rss_end)
    log = d.stop()
    assert d.proc.returncode == 0, log
    assert_all_delivered(tmp_path, sub, timeout=30)
