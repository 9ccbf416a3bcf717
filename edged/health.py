"""No thread dies silently: the daemon's long-lived threads run guarded and report here.

A :class:`HealthBoard` holds the state of each component that has a thread of its own (an
MQTT sender, a status publisher, an Edge TPU probe, the HTTP listener, the supervisor). A
failure is counted (``edged_component_failures_total{component}``), logged with its
traceback once per streak, and marks the component unhealthy
(``edged_component_up{component}`` 0); ``/healthz``, the MQTT status and the systemd
watchdog decision read :meth:`HealthBoard.unhealthy`. :class:`GuardedThread` runs a
thread's loop under that guard and, where that is safe, starts it again with capped
exponential backoff; the loop says it is well again with :meth:`HealthBoard.ok`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import random
import sys
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional

if TYPE_CHECKING:
    from .metrics import Metrics

log = logging.getLogger("edged.health")

RESTART_MIN_SECONDS = 0.5
RESTART_MAX_SECONDS = 30.0
CALM_SECONDS = 60.0  # a thread that ran this long before failing starts again after the shortest wait
_PR_SET_NAME = 15
_libc: Optional[ctypes.CDLL] = None


def name_this_thread() -> None:
    """Give the calling thread's Python name to its OS thread too (Linux: 15 bytes, the end kept:
    ``cam-infer``), so ``top -H``, ``ps -L`` and /proc/PID/task/*/comm tell edged's threads apart."""
    global _libc
    if not sys.platform.startswith("linux"):
        return
    name = threading.current_thread().name.encode(errors="replace")
    if len(name) > 15:  # the stream id is cut, the role ("-infer", "-capture") is kept
        head, sep, role = name.rpartition(b"-")
        name = (head[: max(0, 14 - len(role))] + sep + role)[-15:] if sep else name[:15]
    try:
        _libc = _libc or ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        _libc.prctl(_PR_SET_NAME, ctypes.c_char_p(name), 0, 0, 0)
    except (OSError, AttributeError):  # no libc to call: the thread keeps the process's name
        pass


@dataclass
class ComponentState:
    healthy: bool = True
    failures: int = 0
    last_error: Optional[str] = None
    since: float = 0.0  # time.monotonic() of the last change


class HealthBoard:
    """The health of the daemon's threaded components (thread-safe)."""

    def __init__(self, metrics: Optional[Metrics] = None) -> None:
        self._metrics = metrics
        self._lock = threading.Lock()
        self._components: dict[str, ComponentState] = {}

    def register(self, component: str) -> None:
        """A component that exists (healthy) until it says otherwise; its series start at zero."""
        with self._lock:
            self._components.setdefault(component, ComponentState(since=time.monotonic()))
        if self._metrics is not None:
            self._metrics.component_failures.labels(component)
            self._metrics.component_up.labels(component).set(1)

    def failed(self, component: str, exc: BaseException) -> None:
        """``component`` failed with ``exc``: counted every time, logged once per streak."""
        error = f"{type(exc).__name__}: {exc}"
        with self._lock:
            st = self._components.setdefault(component, ComponentState())
            first = st.healthy
            st.healthy, st.last_error, st.since = False, error, time.monotonic()
            st.failures += 1
        if self._metrics is not None:
            self._metrics.component_failures.labels(component).inc()
            self._metrics.component_up.labels(component).set(0)
        if first:
            log.error("%s failed: %s", component, error, exc_info=(type(exc), exc, exc.__traceback__))
        else:
            log.debug("%s failed again: %s", component, error)

    def ok(self, component: str) -> None:
        """``component`` works (cheap when it already did): a failed one is healthy again, said once."""
        st = self._components.get(component)
        if st is not None and st.healthy:
            return
        with self._lock:
            st = self._components.setdefault(component, ComponentState())
            was_down, down_for = not st.healthy, time.monotonic() - st.since
            st.healthy, st.since = True, time.monotonic()
        if self._metrics is not None:
            self._metrics.component_up.labels(component).set(1)
        if was_down:
            log.info("%s works again after %.1f s", component, down_for)

    def forget(self, component: str) -> None:
        """A component that is gone (a sink closed by a reload)."""
        with self._lock:
            self._components.pop(component, None)
        if self._metrics is not None:
            for metric in (self._metrics.component_up, self._metrics.component_failures):
                try:
                    metric.remove(component)
                except KeyError:
                    pass

    def unhealthy(self) -> dict[str, str]:
        """Each unhealthy component with its last error."""
        with self._lock:
            return {name: st.last_error or "failed" for name, st in self._components.items() if not st.healthy}

    def failures(self, component: str) -> int:
        st = self._components.get(component)
        return st.failures if st is not None else 0


class GuardedThread:
    """A daemon thread whose loop runs under the board's guard.

    ``target`` returning ends the thread. ``target`` raising is reported to the board; with
    ``restart`` the loop is started again after 0.5, 1, 2 … 30 s (with jitter) until ``stop`` is
    set; without, the thread ends and the component stays unhealthy.
    """

    def __init__(
        self,
        component: str,
        target: Callable[[], None],
        board: HealthBoard,
        stop: threading.Event,
        restart: bool = True,
        name: Optional[str] = None,
    ) -> None:
        self.component = component
        self._target = target
        self._board = board
        self._stop = stop
        self._restart = restart
        board.register(component)
        self.thread = threading.Thread(target=self._run, name=name or component, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def join(self, timeout: Optional[float] = None) -> None:
        self.thread.join(timeout)

    def is_alive(self) -> bool:
        return self.thread.is_alive()

    def _run(self) -> None:
        name_this_thread()
        delay = RESTART_MIN_SECONDS
        while True:
            started = time.monotonic()
            try:
                self._target()
                return
            except BaseException as exc:  # the guard: every failure is reported, none is silent
                self._board.failed(self.component, exc)
                if not self._restart or self._stop.is_set():
                    return
            if time.monotonic() - started >= CALM_SECONDS:
                delay = RESTART_MIN_SECONDS
            if self._stop.wait(delay * random.uniform(0.5, 1.0)):
                return
            log.info("%s: starting it again", self.component)
            delay = min(delay * 2, RESTART_MAX_SECONDS)
