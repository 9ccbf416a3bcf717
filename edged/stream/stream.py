"""A Stream: source -> latest-frame slot -> engine -> sinks, given its parts.

Three threads per stream. The capture thread reads frames, prepares each for the model and puts it into a
one-frame slot (a frame inference has not taken is replaced and counted as dropped: the newest frame always wins).
The inference thread submits the newest frame to the engine without waiting for its result; the publish thread
(:mod:`.publish`) takes the results in order, tracks a detector's objects (:mod:`.scene`), builds each Result and
hands it to every sink while the next frame is invoked. Its log lines carry its id (``extra`` ``stream``).
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from typing import TYPE_CHECKING, Callable, Optional

import numpy as np

from ..errors import SourceError
from ..health import name_this_thread
from ..inference import InferenceEngine
from ..logs import Fields
from ..metrics import StreamMetrics
from ..result import Result
from ..sinks import Sink
from ..sources import Source
from .publish import DEPTH, InFlight, Publisher
from .slot import LatestSlot, ReadyFrame
from .state import SourceState, StreamState, rate
from .switch import DetectSwitch

if TYPE_CHECKING:
    from ..config import StreamConfig
    from .scene import StreamScene

# prepared inputs: one being filled, one waiting in the slot, the ones in flight (each kept until
# its result is taken: a frame whose Edge TPU fails is run again from it on the CPU twin)
BUFFERS = 3 + DEPTH
ERROR_LOG_EVERY = 30.0  # seconds between two log lines of one stage's errors
THREAD_RESTART_MIN_SECONDS, THREAD_RESTART_MAX_SECONDS = 0.5, 30.0  # a crashed thread starts again after
# a live source's first open happens in the capture thread; after this long it no longer
# holds READY back (a camera that does not answer must not delay the others, nor systemd)
FIRST_OPEN_GRACE = 3.0
FILE_RETRY_MIN, FILE_RETRY_MAX = 0.5, 10.0  # a file that cannot be read is tried again after 0.5, 1 ... 10 s


class Stream:
    """One configured stream. Construct with its parts, ``start()``, ``close()``."""

    def __init__(
        self,
        cfg: StreamConfig,
        engine: InferenceEngine,
        source: Source,
        sinks: list[Sink],
        metrics: StreamMetrics,
        switch: Optional[DetectSwitch] = None,
        scene: Optional[StreamScene] = None,
    ) -> None:
        self.cfg = cfg
        self.id: str = cfg.id
        self.log = Fields(logging.getLogger("edged.pipeline"), {"stream": cfg.id})
        self.engine = engine
        self.source = source
        self.metrics = metrics
        self.slot = LatestSlot()
        self.preparer = engine.preparer()
        spec = engine.info.input
        self._buffers: queue.SimpleQueue[np.ndarray] = queue.SimpleQueue()
        for _ in range(BUFFERS):
            self._buffers.put(np.empty(spec.shape[1:], np.dtype(spec.dtype)))
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.state = StreamState.CREATED
        self.last_error: Optional[str] = None
        self.switch = switch if switch is not None else DetectSwitch(cfg.id, cfg.detect)
        self.scene = scene
        self.publisher = Publisher(self.id, engine, sinks, metrics, self._report, self._buffers.put, scene, self.switch)
        self.source_state = SourceState.CREATED
        self.source_error: Optional[str] = None
        self._source_down_since: Optional[float] = None
        self._beat = time.monotonic()  # the inference loop's last turn
        self._error_logged: dict[str, float] = {}
        self._source_lock = threading.Lock()  # the source state: set by the capture thread and the grace timer
        self._grace: Optional[threading.Timer] = None
        self._file_retry = FILE_RETRY_MIN  # the next wait of a file source that cannot be read

    # -------------------------------------------------------------- lifecycle
    def start(self) -> None:
        self.metrics.init(self.engine.info)
        if self.source.live:
            # opened by the capture thread: a camera that does not answer (an open can block
            # in C for its whole timeout, or longer) holds up neither start-up nor the others
            self.source_state = SourceState.OPENING
            self._grace = threading.Timer(FIRST_OPEN_GRACE, self._open_overdue)
            self._grace.daemon = True
            self._grace.start()
        else:  # a missing file is a configuration mistake: say so and stop (SourceError)
            self.source.open()
            self._source_is_up()
        for sink in self.sinks:
            sink.start()
        self.state = StreamState.RUNNING
        self._beat = self.publisher.heartbeat = time.monotonic()
        loops = ((self._capture_loop, "capture"), (self._inference_loop, "infer"), (self._publish_loop, "publish"))
        for target, role in loops:
            t = threading.Thread(target=self._guard, args=(target, role), name=f"{self.id}-{role}", daemon=True)
            t.start()
            self._threads.append(t)
        info, spec = self.engine.info, self.engine.info.input
        self.log.info(
            "stream %s: %s -> %s (%s, %s %s, scale %.6g, zero point %d, %s %s) on %s",
            self.id, self.source.describe(), info.name, info.task, spec.dtype, list(spec.shape),
            spec.quantization.scale, spec.quantization.zero_point, info.runtime, self.engine.runtime_version,
            self.engine.accelerator, extra={"accelerator": self.engine.accelerator},
        )  # fmt: skip

    def request_stop(self) -> None:
        """Ask both threads to stop without waiting (so several streams stop in parallel)."""
        self._stop.set()
        if self._grace is not None:
            self._grace.cancel()
        self.source.close()  # an open under way is not waited for: its thread is a daemon thread
        self.slot.end()

    def close(self, timeout: float = 1.5) -> None:
        self.request_stop()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        self.publisher.discard_all()
        if self.scene is not None:
            self.scene.close()  # the snapshots that wait are written
        self.source.close()  # again, now that no read is under way: releases a device the reader held
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as exc:  # a sink failing to flush must not stop the others
                self.log.warning("stream %s: closing sink %s failed: %s", self.id, sink.name, exc)
        if self.state is StreamState.RUNNING:
            self.state = StreamState.STOPPED
        self.metrics.up.set(0)

    def __enter__(self) -> Stream:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def finished(self) -> bool:
        return self.state.finished

    def has_result(self) -> bool:
        return self.first_result.is_set()

    @property
    def sinks(self) -> list[Sink]:
        return self.publisher.sinks

    @sinks.setter
    def sinks(self, sinks: list[Sink]) -> None:
        self.publisher.sinks = sinks

    @property
    def first_result(self) -> threading.Event:
        return self.publisher.first_result

    @property
    def latest(self) -> Optional[Result]:
        return self.publisher.latest

    @property
    def latest_frame(self) -> Optional[tuple[Result, np.ndarray]]:
        """The latest result and the frame it is of."""
        return self.publisher.latest_frame

    @property
    def heartbeat(self) -> float:
        """The older of the last turns of the inference and publish loops (the systemd watchdog reads it)."""
        return min(self._beat, self.publisher.heartbeat)

    # -------------------------------------------------------------- threads
    def _guard(self, target: Callable[[], None], role: str) -> None:
        """Run a thread's loop; a crash is never silent: counted (stage ``thread``), logged with its
        traceback, the stream ``failed`` (``/healthz``, the watchdog and the MQTT status say so) until
        the loop, started again after 0.5, 1, 2 … 30 s, runs again."""
        name_this_thread()
        delay = THREAD_RESTART_MIN_SECONDS
        while True:
            try:
                target()
                return
            except BaseException as exc:  # never die silently
                self.state = StreamState.FAILED
                self.last_error = f"{role} thread crashed: {type(exc).__name__}: {exc}"
                self.metrics.up.set(0)
                self.metrics.count_error("thread")
                self.log.exception("stream %s: %s; starting it again in %.1f s", self.id, self.last_error, delay)
            if self._stop.wait(delay):
                self.slot.end()
                return
            delay = min(delay * 2, THREAD_RESTART_MAX_SECONDS)
            self.state = StreamState.RUNNING
            self._beat = self.publisher.heartbeat = time.monotonic()
            self.log.info("stream %s: %s thread started again", self.id, role)

    def _report(self, stage: str, exc: BaseException) -> None:
        """Count every error; log a stage's error at most once every 30 s."""
        self.metrics.count_error(stage)
        self.last_error = f"{stage}: {exc}"
        now = time.monotonic()
        if now - self._error_logged.get(stage, -1e9) >= ERROR_LOG_EVERY:
            self._error_logged[stage] = now
            self.log.error("stream %s: %s error: %s", self.id, stage, exc, extra={"stage": stage})

    def _source_is_up(self) -> None:
        with self._source_lock:
            self.source_state = SourceState.UP
        self.metrics.source_up.set(1)

    def _source_is_down(self, error: str) -> None:
        with self._source_lock:
            self.source_state = SourceState.CONNECTING
            self.source_error = error
        self.metrics.source_up.set(0)
        self._source_down_since = time.monotonic()

    def _open_overdue(self) -> None:
        """The grace timer: a first open still under way no longer holds READY back."""
        with self._source_lock:
            if self.source_state is not SourceState.OPENING:
                return
            self.source_state = SourceState.CONNECTING
            self.source_error = f"{self.source.describe()} has not opened within {FIRST_OPEN_GRACE:g} s"
        self._source_down_since = time.monotonic() - FIRST_OPEN_GRACE
        self.log.warning("stream %s: %s; still trying, the other streams go on", self.id, self.source_error)

    def _first_open(self) -> bool:
        """A live source's first open, in the capture thread; then reconnects. False when stopped."""
        try:
            self.source.open()
        except SourceError as exc:
            # a camera that is not there yet must not stop the other streams: keep trying
            self._source_is_down(str(exc))
            self.log.error("stream %s: %s; retrying in the background", self.id, exc)
            return self._reconnect()
        if self._grace is not None:
            self._grace.cancel()
        if self.source_state is SourceState.CONNECTING:  # after the grace: say it is there after all
            self.log.info("stream %s: source %s is open", self.id, self.source.describe())
        self._source_is_up()
        return not self._stop.is_set()

    def _reconnect(self) -> bool:
        """Open a live source again with capped exponential backoff and jitter; False when stopped."""
        cfg = self.cfg.source
        delay = cfg.reconnect_min_seconds
        while not self._stop.is_set():
            if self._stop.wait(delay * random.uniform(0.5, 1.0)):
                return False
            try:
                self.source.open()
            except SourceError as exc:
                self.source_error = str(exc)
                self.metrics.count_error("source")
                delay = min(delay * 2, cfg.reconnect_max_seconds)
                continue
            down = time.monotonic() - (self._source_down_since or time.monotonic())
            self.metrics.count_reconnect()
            self._source_is_up()
            self.log.info("stream %s: source %s is back after %.1f s", self.id, self.source.describe(), down)
            return True
        return False

    def _source_failed(self, exc: Exception) -> bool:
        """A read failed: count it; a live source is opened again. False when the stream stops."""
        self.metrics.up.set(0)
        if not self.source.live:
            return self._file_failed(exc)
        self._report("source", exc)
        # a live source lost its device or connection: release it, come back with backoff
        self.source.release()
        self._source_is_down(str(exc))
        self.log.warning("stream %s: source lost (%s); reconnecting", self.id, exc)
        return self._reconnect()

    def _file_failed(self, exc: Exception) -> bool:
        """A file source could not be read (a file rewritten in place, truncated, removed): count
        it, log once per streak, try again with backoff until it reads. False when stopped."""
        self.metrics.count_error("source")
        self.last_error = f"source: {exc}"
        if self.source_state is not SourceState.CONNECTING:
            self._source_is_down(str(exc))
            self.log.warning("stream %s: source cannot be read (%s); retrying until it can", self.id, exc)
        else:
            self.source_error = str(exc)
        wait, self._file_retry = self._file_retry, min(self._file_retry * 2, FILE_RETRY_MAX)
        return not self._stop.wait(wait * random.uniform(0.75, 1.0))

    def _file_readable(self) -> None:
        """A frame came after a streak of failures of a file source: it is back."""
        down = time.monotonic() - (self._source_down_since or time.monotonic())
        self._file_retry = FILE_RETRY_MIN
        self._source_is_up()
        self.log.info("stream %s: source %s readable again after %.1f s", self.id, self.source.describe(), down)

    def _ended(self) -> None:
        """The source has no more frames: the end of a finite one, or a failure for good."""
        why = self.source.end_error() if self.source.finite else "a source that does not end by configuration ended"
        if why is None:
            self.log.info("stream %s: source ended after %d frames", self.id, self.source.frames_read)
            return
        self.state = StreamState.FAILED  # edged run exits 1; /healthz says 503
        self.last_error = f"source: {why}"
        self.metrics.up.set(0)
        self.log.error("stream %s: source ended after %d frames: %s", self.id, self.source.frames_read, why)

    def _capture_loop(self) -> None:
        # (also after a crash of this thread: a live source that is not up is opened again)
        if self.source.live and self.source_state is not SourceState.UP and not self._first_open():
            self.slot.end()
            return
        # A source with no pace of its own that is not live (a file read as fast as possible)
        # is read one frame ahead of inference: every frame it decodes is processed, and the
        # capture thread does not spin holding the GIL. Paced and live sources are read
        # continuously, and the newest frame wins.
        ahead_only = not self.source.live and not self.source.paced
        while not self._stop.is_set():
            if ahead_only and not self.slot.wait_free(0.25):
                continue
            try:
                frame = self.source.read()
            except Exception as exc:
                if not self._source_failed(exc):
                    break
                continue
            if frame is None:
                if not self._stop.is_set():
                    self._ended()
                break
            if self.source_state is SourceState.CONNECTING:
                self._file_readable()
            self.metrics.stage["capture"].observe(frame.capture_seconds)
            # prepare here, while the inference thread is busy with the previous frame
            buf = self._free_buffer()
            try:
                prepared = self.preparer.prepare(frame.image, buf)
            except Exception as exc:
                self._buffers.put(buf)
                self._report("preprocess", exc)
                continue
            replaced = self.slot.put(ReadyFrame(frame, prepared, time.monotonic()))
            if replaced is not None:
                self._buffers.put(replaced.prepared.data)
                self.metrics.count_dropped()
        self.slot.end()

    def _free_buffer(self) -> np.ndarray:
        """A free input buffer: one of the three, or a new one if a crashed thread lost one."""
        try:
            return self._buffers.get_nowait()
        except queue.Empty:
            spec = self.engine.info.input
            return np.empty(spec.shape[1:], np.dtype(spec.dtype))

    def _inference_loop(self) -> None:
        while not self._stop.is_set():
            self._beat = time.monotonic()
            ready = self.slot.take(0.25)
            if ready is None:
                if self.slot.ended:
                    break
                continue
            if not self.switch.on:  # detection off: the camera stays open, nothing is inferred
                self._buffers.put(ready.prepared.data)
                continue
            queued = time.monotonic() - ready.ready
            try:
                pending = self.engine.submit(ready.prepared, ready.frame.image)
            except Exception as exc:
                self._buffers.put(ready.prepared.data)
                self._report("inference", exc)
                continue
            if not self.publisher.put(InFlight(ready, pending, queued), self._stop):
                break
        self.publisher.input_done.set()  # the publish thread finishes what is in flight, then ends

    def _publish_loop(self) -> None:
        self.publisher.loop(self._stop)
        if self.state is StreamState.RUNNING:
            self.state = StreamState.ENDED if not self._stop.is_set() else StreamState.STOPPED
        self.metrics.up.set(0)

    # -------------------------------------------------------------- status
    def fps(self, window: float = 5.0) -> float:
        return rate(self.publisher.times, window)
