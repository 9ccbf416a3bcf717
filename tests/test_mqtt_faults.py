"""The mqtt sink's faults, reproduced the way they were found (issue 13): it never stops silently.

A queued row that is not UTF-8, a queue file of garbage, a WAL truncated mid-frame, a full
disk (a 256 kB tmpfs), a sender thread killed by an exception, two boards with the same
device name on one broker. Each test runs the sink in this process (a ``SinkContext`` with a
``HealthBoard`` and ``Metrics``, as the daemon builds it) against a real mosquitto where
delivery is checked, and says what was delivered, dropped, counted and logged.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import subprocess
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest
from support.client import free_port
from support.mosquitto import Broker
from support.wait import wait_for

from edged.health import HealthBoard
from edged.metrics import Metrics
from edged.result import Class, Result
from edged.sinks.base import SinkContext
from edged.sinks.mqtt.config import MqttSinkConfig

mqtt = pytest.importorskip("edged.sinks.mqtt")
paho = pytest.importorskip("paho.mqtt.client")

pytestmark = pytest.mark.faults
system = pytest.mark.system  # the tests with mosquitto (a child process)

SID = "cam"
DEVICE = "dev"
TOPIC = f"edged/{DEVICE}/{SID}/result"


def result(seq: int) -> Result:
    return Result(SID, seq, float(seq), "m", "cpu", "classification", 8, 8, classes=[Class(1, "cat", 0.9)])


class Subscriber:
    """The seq of every result that arrives on TOPIC, in arrival order."""

    def __init__(self, port: int) -> None:
        self.seqs: list[int] = []
        self._lock = threading.Lock()
        self.client = paho.Client(callback_api_version=paho.CallbackAPIVersion.VERSION2, client_id="test-sub")
        ready = threading.Event()
        # (a result queued while not connected arrives on the replay topic)
        self.client.on_connect = lambda c, *a: (c.subscribe([(TOPIC, 1), (f"{TOPIC}/replay", 1)]), ready.set())
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port, keepalive=10)
        self.client.loop_start()
        assert ready.wait(10), "the subscriber did not connect"

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self._lock:
            self.seqs.append(json.loads(msg.payload)["seq"])

    def got(self) -> list[int]:
        with self._lock:
            return list(self.seqs)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Made:
    """A sink as the daemon builds it: its context's board and metrics."""

    def __init__(self, queue: Path, port: int, **over: Any) -> None:
        self.metrics = Metrics()
        self.board = HealthBoard(self.metrics)
        cfg = MqttSinkConfig(device=DEVICE, port=port, queue_path=str(queue), **over)
        self.sink = mqtt.MqttSink(cfg, SinkContext(SID, self.metrics, None, self.board))

    def value(self, name: str, **labels: str) -> float | None:
        return self.metrics.registry.get_sample_value(name, labels)

    def fault(self, fault: str) -> float | None:
        return self.value("edged_queue_faults_total", sink=f"mqtt:{SID}", fault=fault)


@pytest.fixture
def broker(tmp_path) -> Iterator[Broker]:
    b = Broker(tmp_path, free_port())
    b.start()
    yield b
    b.stop()


def fill(path: Path, n: int) -> None:
    """A queue file with results 0..n-1, as an earlier run left it."""
    store = mqtt.MessageStore(path, 10000)
    for seq in range(n):
        store.append(TOPIC, result(seq).to_json())
    store.close()


# ---------------------------------------------------------------------- a corrupt queue file
def test_a_corrupt_queue_file_is_moved_aside_and_the_stream_starts(tmp_path, caplog) -> None:
    queue = tmp_path / "q.sqlite"
    queue.write_bytes(os.urandom(8192))  # garbage: "file is not a database"
    made = Made(queue, port=1)
    made.sink.start()  # no ConfigError (it was exit 2, a crash loop to systemd's start limit)
    try:
        made.sink.publish(result(0))
        assert len(made.sink.store) == 1  # a fresh queue works
    finally:
        made.sink.close()
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("q.sqlite.corrupt-")]
    assert len(aside) == 1 and aside[0].stat().st_size == 8192  # kept, for whoever wants to look
    lines = [r.getMessage() for r in caplog.records if "damaged" in r.getMessage()]
    assert len(lines) == 1 and str(aside[0]) in lines[0] and "file is not a database" in lines[0]
    assert made.fault("corrupt_file") == 1 and made.sink.counts.faults["corrupt_file"] == 1


def test_a_damaged_database_is_moved_aside(tmp_path, caplog) -> None:
    queue = tmp_path / "q.sqlite"
    fill(queue, 300)
    data = bytearray(queue.read_bytes())
    data[4096 * 2 : 4096 * 3] = os.urandom(4096)  # a page of the table, overwritten: a valid header
    queue.write_bytes(bytes(data))
    faults: list[str] = []
    store = mqtt.MessageStore(queue, 100, lambda f, n: faults.append(f))
    store.close()
    assert store.moved_to is not None and store.depth == 0 and faults == ["corrupt_file"]
    assert "damaged" in caplog.text


# ---------------------------------------------------------------------- a WAL truncated mid-frame
def test_a_truncated_wal_is_recovered_and_counted_at_start(tmp_path, caplog) -> None:
    live = tmp_path / "live.sqlite"
    store = mqtt.MessageStore(live, 10000)
    for seq in range(100):
        store.append(TOPIC, result(seq).to_json())
    # a crash: the files as they are on disk while the process holds them (the WAL not checkpointed)
    queue = tmp_path / "q.sqlite"
    for suffix in ("", "-wal"):
        shutil.copyfile(f"{live}{suffix}", f"{queue}{suffix}")
    store.close()
    wal = Path(f"{queue}-wal")
    assert wal.stat().st_size > 4096 * 10, "the results should be in the WAL"
    with wal.open("r+b") as f:
        f.truncate(wal.stat().st_size // 2 + 1000)  # mid-frame
    reference = tmp_path / "ref.sqlite"
    for suffix in ("", "-wal"):
        shutil.copyfile(f"{queue}{suffix}", f"{reference}{suffix}")
    expected = sqlite3.connect(reference).execute("SELECT COUNT(*) FROM queue").fetchone()[0]
    assert 0 < expected < 100  # what SQLite recovers: the commits before the cut

    caplog.set_level(logging.INFO, logger="edged.sinks.mqtt")
    made = Made(queue, port=1)
    made.sink.start()
    try:
        assert len(made.sink.store) == expected
        assert [r[2] for r in made.sink.store.peek(1000)] == [result(s).to_json() for s in range(expected)]
    finally:
        made.sink.close()
    assert f"mqtt {SID}: {expected} queued results from before found in {queue}: sent first" in caplog.text
    print(f"WAL cut mid-frame: {expected} of 100 queued results recovered, all of them in the queue")


# ---------------------------------------------------------------------- a row that is not UTF-8
@system
def test_a_row_that_is_not_utf8_is_skipped_and_the_rest_delivered(tmp_path, broker, caplog) -> None:
    queue = tmp_path / "q.sqlite"
    fill(queue, 50)
    db = sqlite3.connect(queue)  # one byte that is not UTF-8, written into the file directly
    db.execute("UPDATE queue SET payload = CAST(X'7B22736571223AFF7D' AS TEXT) WHERE id = 10")
    db.commit()
    db.close()
    sub = Subscriber(broker.port)
    made = Made(queue, broker.port)
    made.sink.start()
    try:
        for seq in range(50, 60):
            made.sink.publish(result(seq))
        expected = [s for s in range(60) if s != 9]  # row 10 held seq 9
        wait_for(lambda: sub.got() == expected, 15, lambda: f"results {expected}, got {sub.got()}")
        assert made.board.unhealthy() == {}
    finally:
        made.sink.close()
        sub.close()
    assert made.sink.counts.failed == 1 and made.fault("bad_row") == 1
    assert made.value("edged_publish_total", sink=f"mqtt:{SID}", outcome="sent") == 59
    assert caplog.text.count("cannot be read") == 1 and "queued result 10" in caplog.text
    print(f"a row not UTF-8: {len(sub.got())} of 60 delivered, the bad one skipped and counted")


# ---------------------------------------------------------------------- the sender killed
@system
def test_a_sender_killed_by_an_exception_says_so_and_recovers(tmp_path, broker, caplog, monkeypatch) -> None:
    caplog.set_level(logging.INFO, logger="edged.health")
    sub = Subscriber(broker.port)
    made = Made(tmp_path / "q.sqlite", broker.port)
    store_peek = mqtt.MessageStore.peek
    calls = {"n": 0}
    injected = threading.Event()
    resume = threading.Event()

    def peek_failing_once(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 5:
            injected.set()
            raise sqlite3.OperationalError("injected: disk I/O error")
        if injected.is_set():
            resume.wait(10)  # stay down until the test saw it unhealthy
        return store_peek(self, *args, **kwargs)

    monkeypatch.setattr(mqtt.MessageStore, "peek", peek_failing_once)
    made.sink.start()
    try:
        for seq in range(20):
            made.sink.publish(result(seq))
        wait_for(injected.is_set, 10, "the injected failure")
        component = f"mqtt-sender:{SID}"
        wait_for(lambda: component in made.board.unhealthy(), 5, "the sender reported unhealthy")
        assert "injected: disk I/O error" in made.board.unhealthy()[component]
        assert made.value("edged_component_up", component=component) == 0
        assert made.value("edged_component_failures_total", component=component) == 1
        assert made.sink.counts.failed == 1
        resume.set()
        for seq in range(20, 40):
            made.sink.publish(result(seq))
        wait_for(lambda: sorted(set(sub.got())) == list(range(40)), 15, lambda: f"40 results, got {sub.got()}")
        wait_for(lambda: not made.board.unhealthy(), 5, "the sender healthy again")
        assert made.value("edged_component_up", component=component) == 1
    finally:
        made.sink.close()
        sub.close()
    assert f"{component} failed: OperationalError: injected" in caplog.text
    assert f"{component} works again" in caplog.text
    assert made.value("edged_component_up", component=component) is None  # forgotten on close
    got = sub.got()
    print(f"sender killed: {len(set(got))} of 40 delivered, {len(got) - len(set(got))} duplicates")


@system
def test_a_status_thread_killed_by_an_exception_says_so_and_recovers(tmp_path, broker, caplog, monkeypatch) -> None:
    caplog.set_level(logging.INFO, logger="edged.health")
    made = Made(tmp_path / "q.sqlite", broker.port, status_interval=1)
    conn = made.sink.conn
    publish_status = conn.publish_status
    calls = {"n": 0}

    def failing_once() -> None:
        calls["n"] += 1
        if calls["n"] == 2:  # the first is the connect's; the second, the status thread's
            raise RuntimeError("injected")
        publish_status()

    monkeypatch.setattr(conn, "publish_status", failing_once)
    made.sink.start()
    component = f"mqtt-status:edged-{DEVICE}"
    try:
        wait_for(lambda: component in made.board.unhealthy(), 10, "the status thread reported unhealthy")
        assert made.value("edged_component_failures_total", component=component) == 1
        wait_for(lambda: calls["n"] >= 4 and not made.board.unhealthy(), 10, "the status published again")
    finally:
        made.sink.close()
    assert f"{component} failed: RuntimeError: injected" in caplog.text
    assert f"{component} works again" in caplog.text


# ---------------------------------------------------------------------- a full disk
@pytest.fixture
def small_disk(tmp_path) -> Iterator[Path]:
    """A 256 kB tmpfs of the test's own (root may mount one here; without the right, the test skips)."""
    where = tmp_path / "small"
    where.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(where)], capture_output=True)
    if done.returncode != 0:
        reason = f"cannot mount a tmpfs: {done.stderr.decode(errors='replace').strip()}"
        if os.environ.get("EDGED_REQUIRE_TOOLS") == "1":
            pytest.fail(f"{reason} (EDGED_REQUIRE_TOOLS=1)")
        pytest.skip(reason)
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)


def take_space(where: Path, size: int) -> Path:
    """A file of ``size`` bytes on ``where`` (less when the disk is full first): its removal gives the space back."""
    filler = where / "filler"
    with filler.open("wb", buffering=0) as f:
        try:
            for _ in range(size // 1024):
                f.write(b"\0" * 1024)
        except OSError:
            pass
    return filler


@system
def test_a_full_disk_drops_counts_says_so_and_resumes_by_itself(tmp_path, small_disk, caplog) -> None:
    broker = Broker(tmp_path, free_port())  # not started yet: the results wait in the queue
    made = Made(small_disk / "q.sqlite", broker.port)
    made.sink.start()
    filler: Path | None = None
    published = 0
    try:
        filler = take_space(small_disk, 128 * 1024)  # half the disk: the other programs' files
        while made.fault("disk_full") == 0 and published < 5000:
            made.sink.publish(result(published))  # never raises: the result is dropped, counted
            published += 1
        assert made.fault("disk_full") == 1, "the disk did not fill up"
        for _ in range(50):  # results beyond it: dropped, counted
            made.sink.publish(result(published))
            published += 1
        dropped_full = made.sink.counts.dropped
        assert dropped_full >= 50
        broker.start()
        sub = Subscriber(broker.port)
        # what is queued goes out although the disk is still full
        wait_for(lambda: len(sub.got()) == published - dropped_full, 15, lambda: f"queued ones, got {len(sub.got())}")
        filler.unlink()  # space again: no restart
        filler = None
        for _ in range(10):
            made.sink.publish(result(published))
            published += 1
        wait_for(lambda: len(sub.got()) >= published - dropped_full, 15, lambda: f"all, got {len(sub.got())}")
        assert made.sink.counts.dropped == dropped_full  # nothing dropped once there is space
        assert made.board.unhealthy() == {}
        sub.close()
    finally:
        made.sink.close()
        broker.stop()
        if filler is not None:
            filler.unlink()
    got = sub.got()
    assert got == sorted(got) and len(set(got)) == published - dropped_full
    assert got[-10:] == list(range(published - 10, published))
    assert made.sink.counts.failed == 0 and made.sink.counts.sent == published - dropped_full
    assert caplog.text.count("disk full") == 1 and "database or disk is full" in caplog.text
    assert "cannot rollback" not in caplog.text and "queue full" not in caplog.text
    print(f"disk full: {published} published, {dropped_full} dropped (counted), {len(set(got))} delivered")


# ---------------------------------------------------------------------- two boards, one device name
@system
def test_two_boards_with_one_device_name_get_a_hint(tmp_path, broker, caplog) -> None:
    boards = [Made(tmp_path / f"q{i}.sqlite", broker.port) for i in (1, 2)]  # two pools: two daemons
    for made in boards:
        made.sink.start()
    try:
        assert boards[0].sink.conn.client_id == boards[1].sink.conn.client_id == f"edged-{DEVICE}"
        wait_for(lambda: "another client may be using the client id" in caplog.text, 30, "the hint")
    finally:
        for made in boards:
            made.sink.close()
    hints = [r.getMessage() for r in caplog.records if "another client may be using" in r.getMessage()]
    assert 1 <= len(hints) <= 2  # once per board at most
    assert f"client id edged-{DEVICE}" in hints[0] and "set device: or client_id:" in hints[0]
    assert f"Client edged-{DEVICE} already connected, closing old connection" in broker.log()
