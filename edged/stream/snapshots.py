"""A detector stream's snapshot writer: the events' best frames encoded and saved off the publish thread.

Encoding a 720p JPEG with its box drawn takes several milliseconds; a scene where objects come
and go often would spend them in the publish thread, frame after frame (measured: 5 ms a frame
on average on a beach with a dozen objects). :class:`SnapshotWriter` takes the frame (a
reference) and the event, and a thread of its own writes the file and hands the
:class:`~edged.sinks.base.Snapshot` to the sinks (a :class:`~edged.sinks.base.SceneReport`
with the snapshot alone). At most ``PENDING`` wait; beyond, the newest is not written (counted,
said at most once every 5 minutes). A snapshot that cannot be written is one log line every 5 minutes; any
other failure of the thread is reported as a ``track`` error and the thread goes on: it never
stops silently.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import TYPE_CHECKING, Callable, Optional

import numpy as np

from ..sinks.base import SceneReport, Snapshot

if TYPE_CHECKING:
    from ..tracking import SnapshotStore, TrackEvent

log = logging.getLogger("edged.pipeline")

PENDING = 4  # snapshots waiting to be written, at most
ERROR_EVERY = 300.0  # seconds between two log lines of a snapshot that cannot be written

Deliver = Callable[[SceneReport], None]
Report = Callable[[str, BaseException], None]


class SnapshotWriter:
    def __init__(self, stream: str, store: SnapshotStore) -> None:
        self.stream = stream
        self._fields = {"stream": stream}  # its log lines' extras
        self.store = store
        self.deliver: Optional[Deliver] = None  # the publisher's: to every sink's scene()
        self.report: Optional[Report] = None  # the stream's error counter
        self._queue: queue.Queue[Optional[tuple[TrackEvent, np.ndarray]]] = queue.Queue(PENDING)
        self._thread: Optional[threading.Thread] = None
        self._lock = threading.Lock()
        self._error_at = -1e9
        self._full_said_at = -1e9
        self.written = 0
        self.skipped = 0

    def submit(self, ev: TrackEvent, image: np.ndarray) -> None:
        """Write ``ev``'s snapshot from ``image`` (its best frame) soon; never waits."""
        self._start()
        try:
            self._queue.put_nowait((ev, image))
        except queue.Full:
            self.skipped += 1
            now = time.monotonic()
            if now - self._full_said_at >= ERROR_EVERY:
                self._full_said_at = now
                log.warning("stream %s: snapshots come faster than they are written: %d waiting, event %s's "
                            "skipped (%d skipped in all; said at most every 5 minutes)",
                            self.stream, PENDING, ev.id, self.skipped, extra=self._fields)  # fmt: skip

    def close(self, timeout: float = 2.0) -> None:
        """Write what waits (for ``timeout`` at most), then end the thread."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is None:
            return
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            pass
        thread.join(timeout)

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=f"{self.stream}-snapshots", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException:  # (nothing in the loop raises: a last guard) said, and the next submit starts it again
            log.exception("stream %s: the snapshot writer thread failed; it starts again with the next snapshot",
                          self.stream, extra=self._fields)  # fmt: skip
            with self._lock:
                self._thread = None

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            try:
                self._write(*item)
            except Exception as exc:  # never a silent end: counted and said, and the thread goes on
                if self.report is not None:
                    self.report("track", exc)
                else:
                    log.error(
                        "stream %s: snapshot writer: %s: %s", self.stream, type(exc).__name__, exc, extra=self._fields
                    )

    def _write(self, ev: TrackEvent, image: np.ndarray) -> None:
        try:
            path = self.store.save(self.stream, ev.id, image, ev.best_box, ev.label, ev.best_score)
            jpeg = path.read_bytes()
        except OSError as exc:
            now = time.monotonic()
            if now - self._error_at >= ERROR_EVERY:
                self._error_at = now
                log.error(
                    "stream %s: cannot save the snapshot of event %s: %s", self.stream, ev.id, exc, extra=self._fields
                )
            return
        self.written += 1
        if self.deliver is not None:
            snap = Snapshot(ev.id, ev.label, str(path), jpeg)
            self.deliver(SceneReport(self.stream, time.time(), (), {}, frozenset(), snap))
