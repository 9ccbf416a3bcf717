"""The guard of the daemon's threads: a failure is counted, logged once, marks the component
unhealthy until it works again, and the thread starts again with backoff."""

from __future__ import annotations

import logging
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
