"""A Stream: source -> latest-frame slot -> engine -> sinks, with its metrics.

Two threads per stream. The capture thread reads frames and puts each into a one-frame
slot; when the slot still holds a frame inference has not taken, that frame is replaced
and counted as dropped, so no queue can grow and the newest frame always wins. The
inference thread takes the newest frame, runs the engine, builds the
:class:`~edged.result.Result` and hands it to every sink.
"""

from __future__ import annotations

import collections
import logging
import queue
import random
import threading
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from .engine import Engine, EngineOptions
from .errors import SourceError
from .metrics import Metrics
from .result import Result
from .sinks import Sink, SinkContext, make_sink
from .sources import Frame, Source, make_source

if TYPE_CHECKING:
    from .sinks.mqtt import MqttPool

log = logging.getLogger(__name__)


class LatestSlot:
    """Holds at most one frame; ``put`` replaces, ``take`` waits. Never a queue.

    A source that costs nothing to wait on (a file read as fast as possible) waits for the
    slot to be free (``wait_free``) before reading the next frame: it reads one frame ahead
    of inference, instead of spinning and dropping frames it decoded for nothing.
    """

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._frame: Frame | None = None
        self._ended = False

    def put(self, frame: Frame) -> Frame | None:
        """Store ``frame``; returns the frame it replaced, which nobody took (a dropped frame)."""
        with self._cv:
            replaced = self._frame
            self._frame = frame
            self._cv.notify_all()
            return replaced

    def take(self, timeout: float) -> Frame | None:
        with self._cv:
            if self._frame is None and not self._ended:
                self._cv.wait(timeout)
            frame, self._frame = self._frame, None
            if frame is not None:
                self._cv.notify_all()  # the slot is free again
            return frame

    def wait_free(self, timeout: float) -> bool:
        """Wait until the slot is empty (True), or it ended / time ran out (False)."""
        with self._cv:
            if self._frame is not None and not self._ended:
                self._cv.wait(timeout)
            return self._frame is None and not self._ended

    def end(self) -> None:
        with self._cv:
            self._ended = True
            self._cv.notify_all()

    @property
    def ended(self) -> bool:
        with self._cv:
            return self._ended and self._frame is None


def engine_options(model_cfg: Any) -> EngineOptions:
    m = model_cfg
    return EngineOptions(
        runtime=m.runtime,
        threads=m.threads,
        labels=m.labels,
        top_k=m.top_k,
        threshold=m.threshold,
        resize=m.resize,
        interpolation=m.interpolation,
        mean=m.mean,
        std=m.std,
        iou_threshold=m.iou_threshold,
        max_detections=m.max_detections,
        yolo_boxes=m.yolo_boxes,
    )


class Stream:
    """One configured stream. Construct (loads the model), ``start()``, ``close()``."""

    def __init__(
        self, cfg: Any, metrics: Metrics, engine: Engine | None = None, mqtt_pool: MqttPool | None = None
    ) -> None:
        self.cfg = cfg
        self.id: str = cfg.id
        self.metrics = metrics
        self.engine = engine or Engine(cfg.model.path, engine_options(cfg.model))
        self.source: Source = make_source(cfg.source, self.id)
        self.sinks: list[Sink] = [make_sink(s, SinkContext(self.id, metrics, mqtt_pool)) for s in cfg.sinks]
        self.slot = LatestSlot()
        # The capture thread preprocesses each frame into one of three reused input buffers:
        # one being filled, one waiting in the slot, one being copied into the model's input.
        self.preprocessor = self.engine.make_preprocessor()
        self._input_key = self.engine.input_key
        spec = self.engine.info.input
        self._buffers: queue.SimpleQueue[np.ndarray] = queue.SimpleQueue()
        for _ in range(3):
            self._buffers.put(np.empty(spec.shape[1:], np.dtype(spec.dtype)))
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.state = "created"  # created, running, ended, failed, stopped
        self.last_error: str | None = None
        self.processed = 0
        self.dropped = 0
        self._times: collections.deque[float] = collections.deque(maxlen=256)
        self.latest: Result | None = None
        self.latest_frame: tuple[Result, np.ndarray] | None = None  # the result and the frame it is of
        self.source_state = "created"  # up, connecting
        self.source_error: str | None = None
        self.reconnects = 0
        self._source_down_since: float | None = None
        self.first_result = threading.Event()
        self.heartbeat = time.monotonic()  # the inference loop's last turn (the systemd watchdog reads it)
        self._error_logged: dict[str, float] = {}
        m = metrics
        sid = self.id
        self._h = {
            stage: m.stage_duration.labels(sid, stage)
            for stage in ("capture", "queue", "preprocess", "inference", "postprocess", "publish")
        }
        self._frame_latency = m.frame_latency.labels(sid)
        self._processed = m.frames.labels(sid, "processed")
        self._dropped = m.frames.labels(sid, "dropped")
        self._inferences = {acc: m.inferences.labels(sid, acc) for acc in ("cpu", "edgetpu")}
        self._up = m.stream_up.labels(sid)
        self._source_up = m.source_up.labels(sid)
        self._reconnects = m.source_reconnects.labels(sid)
        self._last = m.last_result.labels(sid)

    # -------------------------------------------------------------- lifecycle
    def start(self) -> None:
        self.metrics.init_stream(self.id, self.engine.info, self.engine.accelerator)
        try:
            self.source.open()
            self.source_state = "up"
            self._source_up.set(1)
        except SourceError as exc:
            if not self.source.live:  # a missing file is a configuration mistake: say so and stop
                raise
            # a camera that is not there yet must not stop the other streams: keep trying
            self.source_state = "connecting"
            self.source_error = str(exc)
            self._source_down_since = time.monotonic()
            log.error("stream %s: %s; retrying in the background", self.id, exc)
        for sink in self.sinks:
            sink.start()
        self.state = "running"
        self.heartbeat = time.monotonic()
        for target, role in ((self._capture_loop, "capture"), (self._inference_loop, "infer")):
            t = threading.Thread(target=self._guard, args=(target, role), name=f"{self.id}-{role}", daemon=True)
            t.start()
            self._threads.append(t)
        info = self.engine.info
        spec = info.input
        log.info(
            "stream %s: %s -> %s (%s, %s %s, scale %.6g, zero point %d, %s %s) on %s",
            self.id,
            self.source.describe(),
            info.name,
            info.task,
            spec.dtype,
            list(spec.shape),
            spec.quantization.scale,
            spec.quantization.zero_point,
            info.runtime,
            self.engine.runtime_version,
            self.engine.accelerator,
        )

    def request_stop(self) -> None:
        """Ask both threads to stop without waiting (so several streams stop in parallel)."""
        self._stop.set()
        self.source.close()
        self.slot.end()

    def close(self, timeout: float = 1.5) -> None:
        self.request_stop()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        self.source.close()  # again, now that no read is under way: releases a device the reader held
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as exc:  # a sink failing to flush must not stop the others
                log.warning("stream %s: closing sink %s failed: %s", self.id, sink.name, exc)
        if self.state == "running":
            self.state = "stopped"
        self._up.set(0)

    def __enter__(self) -> Stream:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def alive(self) -> bool:
        return self.state in ("running", "ended", "stopped", "created")

    @property
    def finished(self) -> bool:
        return self.state in ("ended", "failed", "stopped")

    # -------------------------------------------------------------- threads
    def _guard(self, target: Any, role: str) -> None:
        try:
            target()
        except BaseException as exc:  # never die silently: log, mark failed, /healthz says so
            self.state = "failed"
            self.last_error = f"{role} thread crashed: {type(exc).__name__}: {exc}"
            self._up.set(0)
            log.exception("stream %s: %s", self.id, self.last_error)
            self.slot.end()

    def _report(self, stage: str, exc: BaseException) -> None:
        """Count every error; log a stage's error at most once every 30 s."""
        self.metrics.errors.labels(self.id, stage).inc()
        self.last_error = f"{stage}: {exc}"
        now = time.monotonic()
        if now - self._error_logged.get(stage, -1e9) >= 30.0:
            self._error_logged[stage] = now
            log.error("stream %s: %s error: %s", self.id, stage, exc)

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
                self.metrics.errors.labels(self.id, "source").inc()
                delay = min(delay * 2, cfg.reconnect_max_seconds)
                continue
            down = time.monotonic() - (self._source_down_since or time.monotonic())
            self.reconnects += 1
            self._reconnects.inc()
            self._source_up.set(1)
            self.source_state = "up"
            log.info("stream %s: source %s is back after %.1f s", self.id, self.source.describe(), down)
            return True
        return False

    def _capture_loop(self) -> None:
        if self.source_state == "connecting" and not self._reconnect():
            self.slot.end()
            return
        # A source with no pace of its own that is not live (a file read as fast as possible)
        # is read one frame ahead of inference: every frame it decodes is processed, and the
        # capture thread does not spin holding the GIL. Paced and live sources are read
        # continuously, and the newest frame wins.
        ahead_only = not self.source.live and self.source._fps() is None
        while not self._stop.is_set():
            if ahead_only and not self.slot.wait_free(0.25):
                continue
            try:
                frame = self.source.read()
            except Exception as exc:
                self._report("source", exc)
                self._up.set(0)
                if not self.source.live:
                    if self._stop.wait(1.0):
                        break
                    continue
                # a live source lost its device or connection: release it, come back with backoff
                self.source.release()
                self.source_state = "connecting"
                self.source_error = str(exc)
                self._source_up.set(0)
                self._source_down_since = time.monotonic()
                log.warning("stream %s: source lost (%s); reconnecting", self.id, exc)
                if not self._reconnect():
                    break
                continue
            if frame is None:
                if not self._stop.is_set():
                    log.info("stream %s: source ended after %d frames", self.id, self.source._seq)
                break
            self._h["capture"].observe(frame.capture_seconds)
            # preprocess here, while the inference thread is busy with the previous frame
            buf = self._buffers.get()
            t0 = time.perf_counter()
            try:
                transform = self.preprocessor(frame.image, buf)
            except Exception as exc:
                self._buffers.put(buf)
                self._report("inference", exc)
                continue
            frame.prepared = (buf, transform, self._input_key, time.perf_counter() - t0)
            frame.ready = time.monotonic()
            replaced = self.slot.put(frame)
            if replaced is not None:
                self._buffers.put(replaced.prepared[0])
                self.dropped += 1
                self._dropped.inc()
        self.slot.end()

    def _inference_loop(self) -> None:
        engine = self.engine
        task = engine.info.task
        while not self._stop.is_set():
            self.heartbeat = time.monotonic()
            frame = self.slot.take(0.25)
            if frame is None:
                if self.slot.ended:
                    break
                continue
            queued = time.monotonic() - frame.ready
            buf, transform, key, prep_seconds = frame.prepared
            try:
                out = engine.run_prepared(buf, transform, prep_seconds, key, frame.image)
            except Exception as exc:
                self._report("inference", exc)
                continue
            finally:
                self._buffers.put(buf)
            t = out.timings
            h, w = frame.image.shape[:2]
            result = Result(
                stream=self.id,
                seq=frame.seq,
                timestamp=frame.timestamp,
                model=engine.info.name,
                accelerator=out.accelerator,
                task=task,
                frame_width=w,
                frame_height=h,
                classes=out.classes,
                objects=out.objects,
                source=frame.origin,
                truth=frame.truth,
                latency_ms={
                    "capture": frame.capture_seconds * 1e3,
                    "queue": queued * 1e3,
                    "preprocess": t["preprocess"] * 1e3,
                    "inference": t["inference"] * 1e3,
                    "postprocess": t["postprocess"] * 1e3,
                },
            )
            result.latency_ms["total"] = (time.monotonic() - frame.monotonic) * 1e3
            p0 = time.perf_counter()
            for sink in self.sinks:
                try:
                    sink.publish(result)
                except Exception as exc:
                    self._report("publish", exc)
            publish = time.perf_counter() - p0
            done = time.monotonic()
            self._h["queue"].observe(max(0.0, queued))
            for stage in ("preprocess", "inference", "postprocess"):
                self._h[stage].observe(t[stage])
            self._h["publish"].observe(publish)
            self._frame_latency.observe(done - frame.monotonic)
            self._processed.inc()
            self._inferences[out.accelerator].inc()
            self._up.set(1)
            self._last.set(time.time())
            self.processed += 1
            self._times.append(done)
            self.latest = result
            self.latest_frame = (result, frame.image)
            self.first_result.set()
        if self.state == "running":
            self.state = "ended" if not self._stop.is_set() else "stopped"
        self._up.set(0)

    # -------------------------------------------------------------- status
    def fps(self, window: float = 5.0) -> float:
        now = time.monotonic()
        times = [t for t in list(self._times) if now - t <= window]
        if len(times) < 2:
            return 0.0
        span = max(now - times[0], times[-1] - times[0])
        return (len(times) - 1) / span if span > 0 else 0.0

    def status(self) -> dict[str, Any]:
        info = self.engine.info
        return {
            "id": self.id,
            "state": self.state,
            "source": self.source.describe(),
            "model": info.name,
            "task": info.task,
            "accelerator": self.engine.accelerator,
            "runtime": info.runtime,
            "fps": round(self.fps(), 2),
            "processed": self.processed,
            "dropped": self.dropped,
            "last_error": self.last_error,
            "source_state": self.source_state,
            "source_error": self.source_error,
            "reconnects": self.reconnects,
            **({"edgetpu": self.engine.status()} if hasattr(self.engine, "status") else {}),
        }
