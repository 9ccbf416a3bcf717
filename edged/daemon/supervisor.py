"""The systemd side of the daemon: READY=1 once started up, STATUS= every few seconds,
WATCHDOG=1 while no stream is stuck or failed.

The watchdog is fed only while every running stream's inference loop turns (it turns at
least every 0.25 s, with or without frames): a wedged inference or a crashed inference
thread stops the pings and systemd restarts the daemon.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Sequence

from ..health import GuardedThread, HealthBoard
from ..sdnotify import Notifier
from ..stream import Phase, Stream, StreamState, phase
from . import views

log = logging.getLogger("edged.service")

STATUS_EVERY = 5.0  # seconds between two STATUS= lines to systemd
TICK = 0.25  # seconds between two looks at the streams


def unhealthy(streams: Sequence[Stream], limit: float, now: float) -> tuple[list[str], list[str]]:
    """(running streams whose inference loop has not turned for ``limit`` s, failed streams)."""
    stuck = [s.id for s in streams if s.state is StreamState.RUNNING and now - s.heartbeat > limit]
    failed = [s.id for s in streams if phase(s) is Phase.FAILED]
    return stuck, failed


class Supervisor:
    """A thread that tells systemd how the streams are. ``start()``; it ends with ``stop``."""

    def __init__(
        self,
        notifier: Notifier,
        streams: Callable[[], Sequence[Stream]],
        board: HealthBoard,
        lock: threading.RLock,
        stop: threading.Event,
        ready: threading.Event,
        tick: Callable[[float], None] | None = None,
    ) -> None:
        self.notifier = notifier
        self._streams = streams  # the current streams (a reload replaces them)
        self._lock = lock  # held while a reload swaps the streams
        self._stop = stop
        self.ready = ready
        self._next_status = 0.0
        self._next_ping = 0.0
        self._said: set[str] = set()  # the stuck or failed streams already logged
        self._board = board
        self._tick = tick  # the Edge TPUs' link and temperature checks (edged.doctor.live.TpuWatch.tick)
        self._thread = GuardedThread("supervisor", self._run, board, stop)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        wd = self.notifier.watchdog_seconds
        while not self._stop.wait(TICK):
            self._board.ok("supervisor")  # (after a failure of its own: it turns again)
            now = time.monotonic()
            with self._lock:
                streams = list(self._streams())
                self._tell_status(streams, now)
            if self._tick is not None:
                self._tick(now)
            with self._lock:
                if wd is None or now < self._next_ping:
                    continue
                stuck, failed = unhealthy(streams, wd / 2, now)
            failed += sorted(self._board.unhealthy())  # a component whose thread failed (not restarted yet)
            self._feed(wd, now, stuck, failed)

    def _tell_status(self, streams: list[Stream], now: float) -> None:
        n = self.notifier
        if not self.ready.is_set() and views.started_up(streams):
            self.ready.set()
            line = views.status_line(streams)
            n.notify(ready=1, status=line)
            log.info("ready: %s", line)
            self._next_status = now + STATUS_EVERY
        elif now >= self._next_status:
            n.notify(status=views.status_line(streams))
            self._next_status = now + STATUS_EVERY

    def _feed(self, wd: float, now: float, stuck: list[str], failed: list[str]) -> None:
        if not stuck and not failed:
            self.notifier.notify(watchdog=1)
            self._said.clear()
            self._next_ping = now + wd / 4
        elif set(stuck + failed) - self._said:
            self._said |= set(stuck + failed)
            what = ", ".join(
                [f"{sid} stuck for over {wd / 2:.0f} s" for sid in stuck] + [f"{sid} failed" for sid in failed]
            )
            log.error("not feeding the systemd watchdog (%s): systemd will restart edged", what)
