"""Edge TPU inference in a supervised child process.

libedgetpu can abort the whole process on some USB errors (``LOG(FATAL)``), which Python
cannot catch, and a wedged USB transfer can hang ``invoke()``. So the interpreters that use
the delegate live in a child process, one per Edge TPU (a TPU is opened by one process at
a time), holding one interpreter per stream pinned to that TPU.

* Frames go in through shared memory, pipelined: each model has ``SLOTS`` pairs of blocks
  (an input shaped like the model's, its outputs). The parent preprocesses into a free slot,
  sends ``("infer", id, key, slot)`` and goes on; a reply thread matches each reply to its
  request by id. So the next request is already waiting in the child when an invoke ends,
  and no lock is held across a round trip: one slot is invoked, one waits in the pipe, one is
  being decoded. The pipe carries only requests and replies (no arrays are pickled).
* A request that gets no answer within ``deadline`` seconds of being sent, a child that
  dies (by a signal or an exit), and an invoke error all raise :class:`WorkerFailure` with
  a one-line reason, for that request and every other one in flight; the worker is then
  killed and marked down, and a probe thread
  restarts it with capped exponential backoff. A restart counts as successful when the
  delegate loads and a test inference of every model succeeds; ``generation`` then
  increases and the streams move back.
* Flaps are damped: a worker that fails again within ``stable_seconds`` of coming back
  is a flap (counted in ``flaps``); the probe backoff is not reset by such a restart, it
  doubles, so a TPU that fails right after each probe keeps the streams on the CPU for
  longer and longer. The backoff starts again from ``probe_initial`` only for a failure
  after the worker has stayed up that long.
* The probe thread, one per worker for its life, runs guarded
  (:class:`~edged.health.GuardedThread`, component ``edgetpu-probe:<label>``).
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing
import queue
import threading
import time
from typing import Any, Callable, Optional

import numpy as np

from .errors import WorkerFailure
from .health import GuardedThread, HealthBoard
from .worker_child import child_main
from .worker_requests import Request, _Link, _Model, make_slots, read_replies, start_call

log = logging.getLogger(__name__)

# A worker's start (spawn, imports, every model loaded with the delegate and its test inference)
# that takes longer is a failure: a wedged TPU at start-up costs at most this per device, which
# the systemd unit's TimeoutStartSec allows for (systemd/edged.service).
START_SECONDS = 30.0


# --------------------------------------------------------------------------- the parent (the child: edged.worker_child)


class DeviceWorker:
    """The child process serving one Edge TPU, and its supervision."""

    def __init__(
        self,
        label: str,
        selector: str | None,
        library: str,
        options: dict[str, str] | None = None,
        runtime: str = "auto",
        deadline: float = 1.0,
        probe_initial: float = 1.0,
        probe_max: float = 60.0,
        metrics: Any = None,
        stable_seconds: float | None = None,
        board: HealthBoard | None = None,
    ) -> None:
        self.label = label  # the device label in metrics and logs: "usb:0", "pci:1", "default"
        self._fields = {"tpu": label, "accelerator": "edgetpu"}  # its log lines' extras (EDGED_TPU)
        self.selector = selector
        self.library = library
        self.options = {str(k): str(v) for k, v in (options or {}).items()}
        if selector:
            self.options["device"] = selector
        self.runtime = runtime
        self.deadline = deadline
        self.probe_initial = probe_initial
        self.probe_max = probe_max
        self.metrics = metrics
        if stable_seconds is None:
            from .model_config import EdgeTpuConfig

            stable_seconds = EdgeTpuConfig().stable_seconds  # the one default
        self.stable_seconds = stable_seconds
        self.board = board if board is not None else HealthBoard()  # a private one: failures are still logged
        self.models: dict[str, _Model] = {}
        self.up = False
        self.generation = 0
        self.last_reason: str | None = None
        self._last_failure: WorkerFailure | None = None  # what took the worker down last
        self.next_probe_in: float = probe_initial  # the wait before the next probe (the backoff)
        self.flaps = 0  # failures within stable_seconds of a restart
        self._up_since = 0.0
        self._probe_at = 0.0  # time.monotonic() of the next probe, while down
        self.runtime_version = ""
        self._ctx = multiprocessing.get_context("spawn")  # never fork a process that has threads
        self._link: _Link | None = None  # the child now, while one runs
        self._ids = itertools.count(1)  # request ids (0: the start-up's test inferences)
        self._lock = threading.Lock()  # the worker's state: start, failure, close
        self._closed = threading.Event()
        self._wake = threading.Event()  # set while down: the probe thread has work
        self._prober: GuardedThread | None = None
        self._spawns = 0

    # ---------------------------------------------------------------- set-up
    def register(self, key: str, path: str, threads: int | None = None) -> None:
        self.models[key] = _Model(key, str(path), threads)

    def start(self) -> None:
        """Spawn the child, load every registered model with the delegate, test each once.

        Raises WorkerFailure (and leaves the worker down) when any step fails."""
        with self._lock:
            self._start_locked()

    def _start_locked(self) -> None:
        self._kill_locked()
        from .worker_child import check_library

        try:  # a missing libedgetpu (the usual case) costs no spawn, at start or at each probe
            check_library(self.library)
        except WorkerFailure as exc:
            self._down_locked(exc)
            raise
        parent, child = self._ctx.Pipe()
        from .emulation import ENV, folder
        from .runtime import get_runtime

        if folder() is not None and not self._spawns:
            log.warning(
                "Edge TPU %s: emulated (%s is set): results are replayed recordings",
                self.label,
                ENV,
                extra=self._fields,
            )
        runtime_name = get_runtime(self.runtime).name
        proc = self._ctx.Process(
            target=child_main, args=(child, runtime_name), name=f"edged-edgetpu-{self.label}", daemon=True
        )
        proc.start()
        child.close()
        link = self._link = _Link(proc, parent)
        if self._spawns and self.metrics is not None:
            self.metrics.worker_restarts.labels(self.label).inc()
        self._spawns += 1
        until = time.monotonic() + START_SECONDS
        try:
            for m in self.models.values():
                self._load(link, m, until)
        except WorkerFailure as exc:
            self._down_locked(exc)
            raise
        link.reader = threading.Thread(
            target=read_replies, args=(self, link), name=f"edged-edgetpu-{self.label}-replies", daemon=True
        )
        link.reader.start()
        self.up = True
        self.generation += 1
        self.last_reason = None
        # the backoff is not reset here: only a stay of stable_seconds does; the first start is no come-back
        self._up_since = time.monotonic() if self._spawns > 1 else float("-inf")
        if self.metrics is not None:
            self.metrics.accelerator_up.labels(self.label).set(1)

    def _load(self, link: _Link, m: _Model, until: float) -> None:
        """Load one model in the child, attach its slots, run its test inference (the model upload
        happens on the first invoke) on a free slot, all before ``until``."""

        def left() -> float:
            return round(max(0.1, until - time.monotonic()), 1)

        reply = start_call(link, ("load", m.key, m.path, self.library, self.options, m.threads), left())
        m.info, self.runtime_version = reply[1], reply[2]
        make_slots(m)
        assert m.slots is not None and m.free is not None
        blocks = [(slot.shm.name, slot.out_shm.name) for slot in m.slots]
        start_call(link, ("attach", m.key, blocks), timeout=min(10.0, left()))
        try:
            index = m.free.get(timeout=left())
        except queue.Empty:
            raise WorkerFailure("no free slot for the test inference", "hang") from None
        try:
            m.slots[index].array[...] = 0
            t0 = time.perf_counter()
            start_call(link, ("infer", 0, m.key, index), timeout=left())
            m.first_inference_seconds = time.perf_counter() - t0
        finally:
            m.free.put(index)

    # ---------------------------------------------------------------- requests
    def submit(self, key: str, fill: Callable[[np.ndarray], Any]) -> Request:
        """Start an inference of the model ``key``: ``fill`` writes the input into a free slot's
        [H, W, C] array, the request is sent, and this returns without waiting for the reply
        (:meth:`Request.wait`). Raises WorkerFailure when the worker is down."""
        m = self.models[key]
        assert m.slots is not None and m.free is not None, "start() first"
        index = self._acquire(m)
        try:
            view = m.slots[index].array[0]
            fill(view)
            del view
            link = self._link
            if not self.up or link is None:
                raise self._down_failure()
            req = Request(next(self._ids), self, m, index, link)
            with link.lock:
                if link.failure is not None:
                    raise link.failure
                link.pending[req.id] = req
                req.sent = time.monotonic()
                try:
                    link.conn.send(("infer", req.id, key, index))
                except OSError:  # the child is gone: the reply thread fails this request with the reason
                    pass
        except BaseException:
            m.free.put(index)
            raise
        return req

    def _down_failure(self) -> WorkerFailure:
        """Why a request cannot be sent: what took the worker down (its kind too: a stream that
        submits just after a crash falls back for the crash, not for "down")."""
        exc = self._last_failure
        return (
            WorkerFailure(exc.reason, exc.kind) if exc is not None else WorkerFailure("Edge TPU worker is down", "down")
        )

    def _acquire(self, m: _Model) -> int:
        """A free slot; while every one is held, wait (the requests in flight each have a deadline)."""
        assert m.free is not None
        while True:
            if not self.up:
                raise self._down_failure()
            try:
                return m.free.get(timeout=0.1)
            except queue.Empty:
                if self._closed.is_set():
                    raise WorkerFailure("Edge TPU worker closed", "down") from None

    def infer(self, key: str, data: Optional[np.ndarray] = None) -> tuple[list[np.ndarray], float]:
        """One inference, waited for: copies of the outputs (in output order) and the child's invoke
        time (``edged bench``, the tests). Raises WorkerFailure."""

        def fill(view: np.ndarray) -> None:
            if data is not None:
                np.copyto(view, data.reshape(view.shape))

        req = self.submit(key, fill)
        try:
            outputs, seconds = req.wait()
            return [outputs[t.index].copy() for t in self.models[key].info.outputs], seconds
        finally:
            req.release()

    def _fail(self, link: _Link, exc: WorkerFailure) -> None:
        """A request of ``link`` failed: the first failure of the child now running marks the worker down."""
        with link.lock:
            if link.failure is not None:
                return
            link.failure = exc
        with self._lock:
            if self._link is link and self.up:
                self._down_locked(exc)
            elif self._link is link:
                self._kill_locked()

    # ---------------------------------------------------------------- failure and probing
    def _down_locked(self, exc: WorkerFailure) -> None:
        was_up = self.up
        self.up = False
        self.last_reason = exc.reason
        self._last_failure = exc
        link = self._link
        if link is not None:
            with link.lock:  # no request is sent to this child any more; those in flight fail with exc
                if link.failure is None:
                    link.failure = exc
        self._kill_locked()
        if self.metrics is not None:
            self.metrics.accelerator_up.labels(self.label).set(0)
        now = time.monotonic()
        if was_up:
            stayed = now - self._up_since
            if stayed < self.stable_seconds:  # a flap: the probe backoff goes on growing
                self.flaps += 1
                self.next_probe_in = min(self.next_probe_in * 2, self.probe_max)
                if self.metrics is not None:
                    self.metrics.edgetpu_flaps.labels(self.label).inc()
            else:
                self.next_probe_in = self.probe_initial
            log.warning(
                "Edge TPU %s: %s%s", self.label, exc.reason,
                f" ({stayed:.1f} s after coming back: flap {self.flaps})" if stayed < self.stable_seconds else "",
                extra=self._fields,
            )  # fmt: skip
        self._probe_at = now + self.next_probe_in
        self._wake.set()
        self._ensure_prober()

    def next_probe_seconds(self) -> float | None:
        """How long until the next probe; None while the worker is up."""
        if self.up:
            return None
        return round(max(0.0, self._probe_at - time.monotonic()), 1)

    def _ensure_prober(self) -> None:
        if self._closed.is_set() or self._prober is not None:
            return
        component = f"edgetpu-probe:{self.label}"
        self._prober = GuardedThread(component, self._probe_loop, self.board, self._closed, name=component)
        self._prober.start()

    def _probe_loop(self) -> None:
        """While the worker is down, start it again at ``_probe_at``; the wait doubles after each failed probe."""
        while not self._closed.is_set():
            self._wake.wait()
            if self._closed.wait(max(0.0, self._probe_at - time.monotonic())):
                return
            with self._lock:
                if self._closed.is_set():
                    return
                if self.up:
                    self._wake.clear()
                    continue
                try:
                    self._start_locked()
                except WorkerFailure as exc:
                    log.debug("Edge TPU %s: probe failed: %s", self.label, exc.reason)
                    self.next_probe_in = min(self.next_probe_in * 2, self.probe_max)
                    self._probe_at = time.monotonic() + self.next_probe_in
                    continue
                self._wake.clear()
            self.board.ok(f"edgetpu-probe:{self.label}")
            log.info("Edge TPU %s: worker is back (generation %d)", self.label, self.generation, extra=self._fields)

    def _kill_locked(self) -> None:
        link, self._link = self._link, None
        if link is None:
            return
        with link.lock:
            if link.failure is None:
                link.failure = WorkerFailure(self.last_reason or "Edge TPU worker stopped", "down")
        if link.proc.is_alive():
            link.proc.kill()
        link.proc.join(2.0)
        if link.reader is None:  # before start-up ended; afterwards the reply thread closes the pipe
            link.conn.close()

    @property
    def pid(self) -> int | None:
        link = self._link
        return link.proc.pid if link is not None else None

    # ---------------------------------------------------------------- shutdown
    def _free_shm(self, m: _Model) -> None:
        for slot in m.slots or []:
            slot.free()
        m.slots = m.free = None

    def close(self) -> None:
        self._closed.set()
        self._wake.set()
        got = self._lock.acquire(timeout=self.deadline + 0.5)
        try:
            link = self._link
            if link is not None and link.proc.is_alive():
                with link.lock:
                    if link.failure is None:
                        link.failure = WorkerFailure("Edge TPU worker closed", "down")
                    try:
                        link.conn.send(("quit",))
                    except (BrokenPipeError, OSError, ValueError):
                        pass
                link.proc.join(0.5)
            self._kill_locked()
            self.up = False
            reader = link.reader if link is not None else None
            if reader is not None and reader is not threading.current_thread():
                reader.join(1.0)
            for m in self.models.values():
                self._free_shm(m)
        finally:
            if got:
                self._lock.release()
        if self._prober is not None:
            self._prober.join(1.0)
            self.board.forget(self._prober.component)  # a closed worker is no component any more
