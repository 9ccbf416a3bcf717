"""A stream's third thread: the inferences in flight, taken in order, decoded and published.

The inference thread submits a frame to the engine and goes on with the next one; this
thread waits for each result in the order they were submitted, builds the
:class:`~edged.result.Result`, hands it to the sinks and records the metrics. So on the Edge
TPU the next frame is being invoked while this one is decoded and published, and on the
CPU the decoding and publishing of one frame overlap the next frame's invoke.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional

import numpy as np

from ..inference import InferenceEngine, PendingOutput
from ..metrics import StreamMetrics
from ..result import Result
from ..sinks import Sink
from .results import build_result
from .slot import ReadyFrame

if TYPE_CHECKING:
    from ..sinks import SceneReport
    from .scene import StreamScene
    from .switch import DetectSwitch

log = logging.getLogger("edged.pipeline")

DEPTH = 2  # inferences waiting to be published; with the one being published: three in flight
SCENE_IDLE_SECONDS = 10.0  # no result this long (the camera lost): a detector's events end, its counts go to 0


@dataclass(frozen=True)
class InFlight:
    ready: ReadyFrame
    pending: PendingOutput
    queued: float  # seconds the frame waited in the slot


class Publisher:
    """Takes :class:`InFlight` inferences in submission order; ``loop`` runs in the stream's
    ``publish`` thread. Keeps what the status needs: the latest result and its frame, the
    times of the last 256 results."""

    def __init__(
        self,
        stream_id: str,
        engine: InferenceEngine,
        sinks: list[Sink],
        metrics: StreamMetrics,
        report: Callable[[str, BaseException], None],
        give_back: Callable[[np.ndarray], None],
        scene: Optional[StreamScene] = None,
        switch: Optional[DetectSwitch] = None,
    ) -> None:
        self.stream_id = stream_id
        self.engine = engine
        self.sinks = sinks
        self.metrics = metrics
        self._report = report
        self._give_back = give_back  # a prepared input's buffer, free again
        self.inflight: queue.Queue[InFlight] = queue.Queue(maxsize=DEPTH)
        self.input_done = threading.Event()  # the inference thread ended (the source did): finish what is queued
        self.latest: Optional[Result] = None
        self.latest_frame: Optional[tuple[Result, np.ndarray]] = None  # the result and the frame it is of
        self.first_result = threading.Event()
        self.times: collections.deque[float] = collections.deque(maxlen=256)
        self.heartbeat = time.monotonic()  # this loop's last turn
        self.scene = scene  # a detector's tracking, zones and events (None: a classifier's stream)
        if scene is not None and scene.writer is not None:  # its snapshots reach the sinks when written
            scene.writer.deliver, scene.writer.report = self._tell_scene, report
        self.switch = switch
        self._scene_live = True  # False once every event ended (detection off, no result for a while)
        self._started = time.monotonic()

    def put(self, item: InFlight, stop: threading.Event) -> bool:
        """Queue an inference; waits while DEPTH are queued. False when the stream stops first (the
        inference is then discarded here, so its buffers come back)."""
        while True:
            try:
                self.inflight.put(item, timeout=0.25)
                return True
            except queue.Full:
                if stop.is_set():
                    self._discard(item)
                    return False

    def loop(self, stop: threading.Event) -> None:
        """Until the inference thread has ended (``input_done``) or the stream stops, and nothing is queued."""
        while True:
            self.heartbeat = time.monotonic()
            try:
                item = self.inflight.get(timeout=0.25)
            except queue.Empty:
                if self.input_done.is_set() or stop.is_set():
                    self.end_scene()
                    return
                self._watch_switch()
                continue
            self._complete(item)

    def end_scene(self) -> None:
        """Every event ends and every occupancy goes to 0 at once (the stream stops, detection is off)."""
        if self.scene is None or not self._scene_live:
            return
        self._scene_live = False
        try:
            report = self.scene.end_all()
        except Exception as exc:
            self._report("track", exc)
            return
        self._tell_scene(report)

    def _watch_switch(self) -> None:
        """(between results) detection switched off, or no result for SCENE_IDLE_SECONDS: the
        scene ends, so that no count stays on for a scene nobody sees any more."""
        if self.switch is not None and not self.switch.on:
            self.end_scene()
        elif self._scene_live and self.scene is not None:
            last = self.times[-1] if self.times else self._started
            if time.monotonic() - last >= SCENE_IDLE_SECONDS:
                self.end_scene()

    def _tell_scene(self, report: SceneReport) -> None:
        for sink in self.sinks:
            try:
                sink.scene(report)
            except Exception as exc:
                self._report("publish", exc)

    def discard_all(self) -> None:
        """After the threads stopped: what is still queued is waited for and dropped, unpublished
        (its shared-memory slot and buffer come back)."""
        while True:
            try:
                self._discard(self.inflight.get_nowait())
            except queue.Empty:
                return

    def _discard(self, item: InFlight) -> None:
        try:
            item.pending.result()
        except Exception:
            pass  # a stream that stops does not report the failure of a frame it no longer publishes
        finally:
            self._give_back(item.ready.prepared.data)

    def _track(self, result: Result, image: np.ndarray) -> Optional[float]:
        """Track the result's objects and tell the sinks what changed; the seconds it took."""
        if self.scene is None or result.task != "detection":
            return None
        if self.switch is not None and not self.switch.on:
            self.end_scene()
            return None
        self._scene_live = True
        t0 = time.perf_counter()
        try:
            report = self.scene.observe(result, image)
        except Exception as exc:
            self._report("track", exc)
            return None
        seconds = time.perf_counter() - t0
        self._tell_scene(report)
        return seconds

    def _complete(self, item: InFlight) -> None:
        frame, prepared = item.ready.frame, item.ready.prepared
        try:
            out = item.pending.result()
        except Exception as exc:
            self._report("inference", exc)
            return
        finally:
            self._give_back(prepared.data)
        result = build_result(self.stream_id, frame, out, self.engine.info, item.queued)
        tracked = self._track(result, frame.image)
        p0 = time.perf_counter()
        for sink in self.sinks:
            try:
                sink.publish(result)
            except Exception as exc:
                self._report("publish", exc)
        publish = time.perf_counter() - p0
        done = time.monotonic()
        m = self.metrics
        m.stage["queue"].observe(max(0.0, item.queued))
        for stage in ("preprocess", "inference", "postprocess"):
            m.stage[stage].observe(out.timings[stage])
        if tracked is not None:
            m.stage["track"].observe(tracked)
        m.stage["publish"].observe(publish)
        m.frame_latency.observe(done - frame.monotonic)
        m.count_processed(out.accelerator)
        m.up.set(1)
        m.last_result.set(time.time())
        self.times.append(done)
        self.latest = result
        self.latest_frame = (result, frame.image)
        self.first_result.set()
