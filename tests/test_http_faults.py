"""The HTTP listener cannot be starved (issue 13, item 4): the faults as a hostile test found them.

A crowd of slowloris connections, the API's threads all busy, ``max_event_clients`` event
streams, an event client that never reads: /healthz and /metrics answer through all of it,
each refusal is counted (``edged_http_rejected_total{reason}``). Snapshots are encoded once per
frame however many clients ask. On loopback, bounded in count and time.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from support.client import free_port, get, sample, scrape
from support.configs import two_streams
from support.daemon import Daemon
from support.wait import wait_for

from edged.listener import HEAD_PEEK, HEAD_SECONDS, MAX_PENDING

pytestmark = pytest.mark.faults

MAX_EVENTS = 64  # edged.config.MAX_EVENT_CLIENTS: the daemon below is configured at the bound


@pytest.fixture(scope="module")
def daemon(tmp_path_factory, testdata):
    port = free_port()
    config = two_streams(testdata, f"127.0.0.1:{port}", device="faults", demo_fps=50, det_fps=2)
    config["http"] = {"max_event_clients": MAX_EVENTS}
    d = Daemon(tmp_path_factory.mktemp("faults"), config)
    try:
        d.wait_ready()
        yield d
    finally:
        d.stop()
    assert "Traceback" not in d.stderr, d.stderr


def rejected(d: Daemon, reason: str) -> float:
    return sample(scrape(d.port), "edged_http_rejected_total", reason=reason)


def health_checks(d: Daemon, n: int, within: float) -> list[int]:
    """The statuses of ``n`` alternating /healthz and /metrics requests, each given ``within`` s."""
    statuses = []
    for i in range(n):
        try:
            statuses.append(get(d.base, "/healthz" if i % 2 == 0 else "/metrics", timeout=within)[0])
        except OSError:
            statuses.append(0)
    return statuses


def connect_many(port: int, n: int) -> list[socket.socket]:
    return [socket.create_connection(("127.0.0.1", port), 5) for _ in range(n)]


def close_all(socks: list[socket.socket]) -> None:
    for s in socks:
        s.close()


@pytest.mark.system
def test_a_slowloris_crowd_does_not_lock_out_health_and_metrics(daemon) -> None:
    """300 connections (more than MAX_PENDING) each sending a byte a second: every check is answered."""
    crowd = connect_many(daemon.port, MAX_PENDING + 44)
    stop = threading.Event()

    def trickle() -> None:
        request = b"GET /api/v1/status HTTP/1.1\r\nHost: x\r\n"
        i = 0
        while not stop.is_set():
            for s in crowd:
                try:
                    s.send(request[i % len(request) : i % len(request) + 1])
                except OSError:
                    pass  # closed by the listener: the oldest goes when too many wait
            i += 1
            stop.wait(1.0)

    t = threading.Thread(target=trickle, daemon=True)
    t.start()
    try:
        time.sleep(1.0)
        started = time.monotonic()
        statuses = health_checks(daemon, 40, within=2.0)
        took = time.monotonic() - started
    finally:
        stop.set()
        t.join(5)
        close_all(crowd)
    assert statuses == [200] * 40, statuses
    assert took < 20, took
    assert rejected(daemon, "busy") >= 1  # more than MAX_PENDING waited: the oldest were closed


@pytest.mark.system
def test_a_request_head_has_a_deadline_however_slowly_it_trickles(daemon) -> None:
    before = rejected(daemon, "deadline")
    s = socket.create_connection(("127.0.0.1", daemon.port), 5)
    started = time.monotonic()
    closed_after = None
    try:
        s.settimeout(0.5)
        while time.monotonic() - started < HEAD_SECONDS + 5:
            try:
                s.send(b"X")
                if s.recv(1) == b"":
                    closed_after = time.monotonic() - started
                    break
            except TimeoutError:
                continue
            except OSError:
                closed_after = time.monotonic() - started
                break
    finally:
        s.close()
    assert closed_after is not None and HEAD_SECONDS - 1 <= closed_after <= HEAD_SECONDS + 1.5, closed_after
    assert rejected(daemon, "deadline") >= before + 1


@pytest.mark.system
def test_the_api_threads_all_busy_health_checks_still_answer(daemon) -> None:
    """Requests that sent HEAD_PEEK bytes of head and then trickle hold the API's threads, not health's."""
    hogs = connect_many(daemon.port, 40)  # more than API_SLOTS
    try:
        for s in hogs:
            s.sendall(b"GET /api/v1/status HTTP/1.1\r\nX-Pad: " + b"p" * HEAD_PEEK)
        wait_for(lambda: get(daemon.base, "/api/v1/status")[0] == 503, 5, "the API's threads to be all busy")
        assert health_checks(daemon, 20, within=2.0) == [200] * 20
        assert rejected(daemon, "busy") >= 1
    finally:
        close_all(hogs)
    wait_for(lambda: get(daemon.base, "/api/v1/status")[0] == 200, 5, "the API's threads to be free again")


def open_events(port: int, rcvbuf: int = 0) -> tuple[socket.socket, bytes]:
    """An event client: the socket, and the first bytes of its answer."""
    s = socket.socket()
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(5)
    s.connect(("127.0.0.1", port))
    s.sendall(b"GET /api/v1/events HTTP/1.1\r\nHost: x\r\n\r\n")
    return s, s.recv(200)


def event_clients(d: Daemon) -> int:
    return json.loads(get(d.base, "/api/v1/status")[2])["event_clients"]


@pytest.mark.system
def test_max_event_clients_streaming_health_and_metrics_answer(daemon) -> None:
    wait_for(lambda: event_clients(daemon) == 0, 10, "no event client")
    clients = []
    try:
        for _ in range(MAX_EVENTS):
            s, first = open_events(daemon.port)
            clients.append(s)
            assert first.startswith(b"HTTP/1.0 200"), first
        assert event_clients(daemon) == MAX_EVENTS
        assert health_checks(daemon, 20, within=2.0) == [200] * 20
        assert get(daemon.base, "/api/v1/status")[0] == 200
        s, first = open_events(daemon.port)
        while chunk := s.recv(4096):
            first += chunk
        s.close()
        assert first.startswith(b"HTTP/1.0 503") and b"too many event clients" in first, first
    finally:
        close_all(clients)
    wait_for(lambda: event_clients(daemon) == 0, 10, "the event clients to be gone")


@pytest.mark.system
def test_an_event_client_that_never_reads_is_dropped(daemon) -> None:
    wait_for(lambda: event_clients(daemon) == 0, 10, "no event client")
    before = rejected(daemon, "slow_reader")
    s, first = open_events(daemon.port, rcvbuf=4096)
    started = time.monotonic()
    try:
        assert first.startswith(b"HTTP/1.0 200"), first
        wait_for(lambda: event_clients(daemon) == 0, 30, "the client that never reads to be dropped")
        took = time.monotonic() - started
    finally:
        s.close()
    assert rejected(daemon, "slow_reader") == before + 1
    assert took < 30, took
    # its place is free: a client that reads streams
    conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=5)
    conn.request("GET", "/api/v1/events")
    r = conn.getresponse()
    assert r.status == 200 and b"event: result" in r.read1(65536) + r.read1(65536)
    conn.close()
    print(f"dropped after {took:.1f} s")


@pytest.mark.system
@pytest.mark.parametrize("sid", ["demo", "det"])  # 50 frames a second, 2
def test_snapshots_of_many_clients_are_encoded_once_per_frame(daemon, sid) -> None:
    def counts() -> tuple[float, float]:
        m = scrape(daemon.port)
        frames = sample(m, "edged_frames_total", stream=sid, outcome="processed")
        return m.get(("edged_snapshot_encodes_total", (("stream", sid),)), 0.0), frames

    stop = threading.Event()
    fetched = []

    def client() -> None:
        while not stop.is_set():
            status, _, body = get(daemon.base, f"/api/v1/streams/{sid}/snapshot.jpg")
            fetched.append(status == 200 and body[:2] == b"\xff\xd8")

    def rss_mb() -> float:
        status = Path(f"/proc/{daemon.proc.pid}/status").read_text()
        return int(next(line for line in status.splitlines() if line.startswith("VmRSS")).split()[1]) / 1024

    rss0 = rss_mb()
    encodes0, frames0 = counts()
    threads = [threading.Thread(target=client, daemon=True) for _ in range(16)]
    for t in threads:
        t.start()
    time.sleep(3.0)
    stop.set()
    for t in threads:
        t.join(10)
    encodes1, frames1 = counts()
    rss1 = rss_mb()
    assert rss1 - rss0 < 50, (rss0, rss1)  # one JPEG per stream, no arena per thread (before: +120 MB for good)
    assert fetched and all(fetched), fetched.count(False)
    assert sid == "demo" or len(fetched) > 2 * (encodes1 - encodes0)  # the clients of a frame shared its encode
    assert encodes1 - encodes0 <= frames1 - frames0 + 1, (encodes1 - encodes0, frames1 - frames0)
    print(f"{sid}: {len(fetched)} snapshots, {encodes1 - encodes0:.0f} encodes, {frames1 - frames0:.0f} frames")
    print(f"RSS {rss0:.0f} -> {rss1:.0f} MB")


# ---------------------------------------------------------------------------- in process


class _Stream:
    """A stream whose latest frame changes ``frames`` times, one every ``interval`` s."""

    def __init__(self, frames: int, interval: float) -> None:
        self.id = "s"
        self.seq = 0
        self.frames, self.interval = frames, interval
        self.image = np.zeros((240, 320, 3), np.uint8)
        self.scene = None  # a classifier's: no zones to draw

    @property
    def latest_frame(self) -> tuple[SimpleNamespace, np.ndarray]:
        result = SimpleNamespace(seq=self.seq, timestamp=float(self.seq), to_dict=lambda: {"classes": []})
        return result, self.image  # type: ignore[return-value]

    def run(self) -> None:
        for _ in range(self.frames):
            time.sleep(self.interval)
            self.seq += 1


def test_concurrent_snapshot_clients_wait_for_one_encode(monkeypatch) -> None:
    from edged import draw
    from edged.api import SnapshotCache

    encodes = []
    real = draw.jpeg

    def counting(image: np.ndarray) -> bytes:
        encodes.append(1)
        time.sleep(0.01)  # an encode of a full frame takes this long on a Pi
        return real(image)

    monkeypatch.setattr(draw, "jpeg", counting)
    stream = _Stream(frames=50, interval=0.02)
    cache = SnapshotCache()
    producer = threading.Thread(target=stream.run)
    got = []

    def client() -> None:
        while producer.is_alive():
            got.append(cache.get(stream))  # type: ignore[arg-type]

    clients = [threading.Thread(target=client) for _ in range(16)]
    producer.start()
    for t in clients:
        t.start()
    for t in clients + [producer]:
        t.join(10)
    assert got and all(b is not None and b[:2] == b"\xff\xd8" for b in got)
    assert len(encodes) <= stream.frames + 1, (len(encodes), stream.frames)


def test_max_event_clients_is_bounded_by_what_the_listener_serves(tmp_path) -> None:
    from edged.config import MAX_EVENT_CLIENTS, config_from_dict, load_config
    from edged.errors import ConfigError

    stream = {"id": "a", "source": {"type": "synthetic"}, "model": {"path": "m.tflite"}}
    ok = config_from_dict({"http": {"max_event_clients": MAX_EVENT_CLIENTS}, "streams": [stream]})
    assert ok.http.max_event_clients == MAX_EVENTS == MAX_EVENT_CLIENTS
    path = tmp_path / "edged.yaml"
    path.write_text(json.dumps({"http": {"max_event_clients": 256}, "streams": [stream]}))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "http.max_event_clients" in str(err.value) and f"at most {MAX_EVENT_CLIENTS}" in str(err.value)


@pytest.mark.system
def test_a_failure_of_the_listener_loop_is_reported_and_the_listener_comes_back(monkeypatch) -> None:
    from edged.health import GuardedThread, HealthBoard
    from edged.listener import Conn, Listener

    board = HealthBoard()

    class Echo(Listener):
        def serving(self) -> None:
            board.ok("http")

        def run(self, conn: Conn) -> None:
            conn.sock.sendall(b"HTTP/1.0 204 No Content\r\n\r\n")

    server = Echo(("127.0.0.1", 0), type)
    real = Listener._dispatch
    failures = []

    def once(self: Listener, conn: Conn) -> None:
        if not failures:
            failures.append(conn)
            raise RuntimeError("a bug in the listener loop")
        real(self, conn)

    monkeypatch.setattr(Listener, "_dispatch", once)
    stop = threading.Event()
    guard = GuardedThread("http", server.serve_forever, board, stop)
    guard.start()
    port = server.server_address[1]

    def ask() -> bytes:
        with socket.create_connection(("127.0.0.1", port), 5) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\n\r\n")
            try:
                return s.recv(100)
            except OSError:
                return b""

    try:
        assert ask() == b""  # the request the bug met is lost ...
        wait_for(lambda: board.failures("http") == 1, 5, "the failure to be reported")  # counted, logged
        # ... the loop runs again (after 0.5 s at most) and says so
        assert wait_for(lambda: ask().startswith(b"HTTP/1.0 204"), 5, "the listener to answer again")
        assert board.unhealthy() == {}
    finally:
        stop.set()
        server.shutdown()
        server.server_close()
        guard.join(5)
