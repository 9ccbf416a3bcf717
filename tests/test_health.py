"""The guard of the daemon's threads: a failure is counted, logged once, marks the component
unhealthy until it works again, and the thread starts again with backoff."""

from __future__ import annotations

import logging
import sys
import threading

import pytest
from support.wait import wait_for

from edged.daemon import views
from edged.health import GuardedThread, HealthBoard
from edged.metrics import Metrics


def _value(metrics: Metrics, name: str, component: str) -> float:
    v = metrics.registry.get_sample_value(name, {"component": component})
    assert v is not None, name
    return v


def test_a_failing_thread_is_reported_restarted_and_healthy_again(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="edged.health")
    metrics = Metrics()
    board = HealthBoard(metrics)
    stop = threading.Event()
    runs = {"n": 0}

    def loop() -> None:  # fails on its first two runs, then works until stopped
        runs["n"] += 1
        if runs["n"] <= 2:
            raise OSError("database or disk is full")
        while not stop.wait(0.02):
            board.ok("mqtt-sender:cam")

    t = GuardedThread("mqtt-sender:cam", loop, board, stop)
    assert _value(metrics, "edged_component_up", "mqtt-sender:cam") == 1
    t.start()
    wait_for(lambda: board.unhealthy(), 5, "the failure reported")
    assert board.unhealthy() == {"mqtt-sender:cam": "OSError: database or disk is full"}
    ok, detail = views.health([], board)
    assert not ok and detail["components"] == {"mqtt-sender:cam": "OSError: database or disk is full"}
    wait_for(lambda: runs["n"] >= 3 and not board.unhealthy(), 10, "the thread started again and working")
    assert views.health([], board)[0]
    stop.set()
    t.join(2)
    assert not t.is_alive()
    assert board.failures("mqtt-sender:cam") == 2
    assert _value(metrics, "edged_component_failures_total", "mqtt-sender:cam") == 2
    assert _value(metrics, "edged_component_up", "mqtt-sender:cam") == 1
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is not None  # once per streak, with its traceback
    assert any("works again" in r.getMessage() for r in caplog.records)


def test_a_thread_not_restarted_stays_unhealthy() -> None:
    board = HealthBoard()
    t = GuardedThread("http", lambda: 1 / 0, board, threading.Event(), restart=False)
    t.start()
    t.join(2)
    assert not t.is_alive() and board.unhealthy() == {"http": "ZeroDivisionError: division by zero"}
    summary = views.summary("dev", [], board)
    assert summary["unhealthy"] == {"http": "ZeroDivisionError: division by zero"}
    board.forget("http")
    assert board.unhealthy() == {} and "unhealthy" not in views.summary("dev", [], board)


@pytest.mark.faults
def test_an_edgetpu_probe_killed_by_an_exception_is_said_and_probes_again() -> None:
    """The probe thread of a down worker raising something unexpected: reported, started again, and
    once a probe brings the worker back the component works again."""
    from edged.worker import DeviceWorker, WorkerFailure

    board = HealthBoard()
    worker = DeviceWorker("usb:0", None, "/nonexistent/libedgetpu.so.1", probe_initial=0.05, board=board)
    calls = {"n": 0}

    def start_locked() -> None:  # no process: the first probe raises, the second brings it back
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("injected")
        worker.up, worker.generation = True, worker.generation + 1

    worker._start_locked = start_locked  # type: ignore[method-assign]  # the spawn is not under test here
    try:
        with worker._lock:
            worker._down_locked(WorkerFailure("worker killed by SIGKILL", "crash"))
        wait_for(lambda: "edgetpu-probe:usb:0" in board.unhealthy(), 5, "the probe's failure reported")
        assert board.unhealthy()["edgetpu-probe:usb:0"] == "RuntimeError: injected"
        wait_for(lambda: worker.up and not board.unhealthy(), 10, "the probe started again, the worker back")
        assert calls["n"] == 2 and board.failures("edgetpu-probe:usb:0") == 1
    finally:
        worker.close()


@pytest.mark.faults
def test_the_supervisor_killed_by_an_exception_is_said_and_turns_again() -> None:
    from edged.daemon.supervisor import Supervisor
    from edged.sdnotify import Notifier

    board, stop, calls = HealthBoard(), threading.Event(), {"n": 0}

    def streams() -> list:
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("injected")
        return []

    Supervisor(Notifier({}), streams, board, threading.RLock(), stop, threading.Event()).start()
    try:
        wait_for(lambda: "supervisor" in board.unhealthy(), 5, "the supervisor's failure reported")
        wait_for(lambda: calls["n"] > 3 and not board.unhealthy(), 10, "the supervisor turning again")
        assert board.failures("supervisor") == 1
    finally:
        stop.set()


def _os_name(thread: threading.Thread) -> str:
    return open(f"/proc/self/task/{thread.native_id}/comm").read().strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="thread names are read from Linux's /proc")
def test_threads_carry_their_names_to_the_os() -> None:
    """top -H, ps -L and /proc/PID/task/*/comm tell the threads apart; a long stream id is cut, its role kept."""
    seen: dict[str, str] = {}
    done = threading.Event()

    def record() -> None:
        seen[threading.current_thread().name] = _os_name(threading.current_thread())
        done.wait(5)

    board, stop = HealthBoard(None), threading.Event()
    short = GuardedThread("supervisor", record, board, stop, restart=False)
    long = GuardedThread("front-door-camera-infer", record, board, stop, restart=False)
    for t in (short, long):
        t.start()
    wait_for(lambda: len(seen) == 2, 5, "both threads")
    done.set()
    assert seen == {"supervisor": "supervisor", "front-door-camera-infer": "front-doo-infer"}
