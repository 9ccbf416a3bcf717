"""Edge TPU inference in a supervised child process.

libedgetpu can abort the whole process on some USB errors (``LOG(FATAL)``), which Python
cannot catch, and a wedged USB transfer can hang ``invoke()``. So the interpreters that use
the delegate live in a child process, one per Edge TPU (a TPU is opened by one process at
a time), holding one interpreter per stream pinned to that TPU.

* Frames go in through shared memory: the parent preprocesses straight into a
  ``SharedMemory`` block shaped like the model input; the child copies it into the input
  tensor, invokes, and copies the output tensors into a second block. The pipe carries
  only the request and the reply (no arrays are pickled).
* A request that gets no answer within ``deadline`` seconds, a child that dies (by a
  signal or an exit), and an invoke error all raise :class:`WorkerFailure` with a
  one-line reason; the worker is then killed and marked down, and a probe thread
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

import logging
import multiprocessing
import signal
import threading
import time
from dataclasses import dataclass
from multiprocessing import shared_memory
from typing import Any

import numpy as np

from .errors import WorkerFailure
from .health import GuardedThread, HealthBoard
from .worker_child import child_main, output_views, outputs_size

log = logging.getLogger(__name__)

# A worker's start (spawn, imports, every model loaded with the delegate and its test inference)
# that takes longer is a failure: a wedged TPU at start-up costs at most this per device, which
# the systemd unit's TimeoutStartSec allows for (systemd/edged.service).
START_SECONDS = 30.0


# --------------------------------------------------------------------------- the parent (the child: edged.worker_child)


@dataclass
class _Model:
    key: str
    path: str
    threads: int | None
    info: Any = None
    shm: shared_memory.SharedMemory | None = None
    out_shm: shared_memory.SharedMemory | None = None
    array: np.ndarray | None = None
    outputs: list[np.ndarray] | None = None
    first_inference_seconds: float | None = None


def describe_exit(code: int | None) -> str:
    if code is None:
        return "worker stopped answering"
    if code < 0:
        try:
            return f"worker killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"worker killed by signal {-code}"
    return f"worker exited with code {code}"


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
            from .config import EdgeTpuConfig

            stable_seconds = EdgeTpuConfig().stable_seconds  # the one default
        self.stable_seconds = stable_seconds
        self.board = board if board is not None else HealthBoard()  # a private one: failures are still logged
        self.models: dict[str, _Model] = {}
        self.up = False
        self.generation = 0
        self.last_reason: str | None = None
        self.next_probe_in: float = probe_initial  # the wait before the next probe (the backoff)
        self.flaps = 0  # failures within stable_seconds of a restart
        self._up_since = 0.0
        self._probe_at = 0.0  # time.monotonic() of the next probe, while down
        self.runtime_version = ""
        self._ctx = multiprocessing.get_context("spawn")  # never fork a process that has threads
        self._proc: Any = None
        self._conn: Any = None
        self._lock = threading.Lock()
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
        parent, child = self._ctx.Pipe()
        from .runtime import get_runtime

        runtime_name = get_runtime(self.runtime).name
        proc = self._ctx.Process(
            target=child_main, args=(child, runtime_name), name=f"edged-edgetpu-{self.label}", daemon=True
        )
        proc.start()
        child.close()
        self._proc, self._conn = proc, parent
        if self._spawns and self.metrics is not None:
            self.metrics.worker_restarts.labels(self.label).inc()
        self._spawns += 1
        until = time.monotonic() + START_SECONDS

        def left() -> float:
            return round(max(0.1, until - time.monotonic()), 1)

        try:
            for m in self.models.values():
                reply = self._call(("load", m.key, m.path, self.library, self.options, m.threads), timeout=left())
                m.info, self.runtime_version = reply[1], reply[2]
                size = int(np.prod(m.info.input.shape)) * np.dtype(m.info.input.dtype).itemsize
                if m.shm is None or m.out_shm is None or m.shm.size < size or m.out_shm.size < outputs_size(m.info):
                    self._free_shm(m)
                    m.shm = shared_memory.SharedMemory(create=True, size=size)
                    m.out_shm = shared_memory.SharedMemory(create=True, size=outputs_size(m.info))
                m.array = np.ndarray(m.info.input.shape, dtype=np.dtype(m.info.input.dtype), buffer=m.shm.buf)
                m.outputs = output_views(m.info, m.out_shm.buf)
                self._call(("attach", m.key, m.shm.name, m.out_shm.name), timeout=min(10.0, left()))
                m.array[...] = 0  # the test inference: the model upload happens on the first invoke
                t0 = time.perf_counter()
                self._call(("infer", m.key), timeout=left())
                m.first_inference_seconds = time.perf_counter() - t0
        except WorkerFailure as exc:
            self._down_locked(exc)
            raise
        self.up = True
        self.generation += 1
        self.last_reason = None
        # the backoff is not reset here: only a stay of stable_seconds does; the first start is no come-back
        self._up_since = time.monotonic() if self._spawns > 1 else float("-inf")
        if self.metrics is not None:
            self.metrics.accelerator_up.labels(self.label).set(1)

    # ---------------------------------------------------------------- requests
    def _call(self, msg: tuple[Any, ...], timeout: float) -> tuple[Any, ...]:
        conn, proc = self._conn, self._proc
        try:
            conn.send(msg)
            ready = conn.poll(timeout)
        except (BrokenPipeError, EOFError, OSError):
            proc.join(0.5)
            raise WorkerFailure(describe_exit(proc.exitcode), "crash") from None
        if not ready:
            if not proc.is_alive():
                raise WorkerFailure(describe_exit(proc.exitcode), "crash")
            raise WorkerFailure(f"no result within {timeout:g} s; worker killed", "hang")
        try:
            reply = conn.recv()
        except (EOFError, OSError):
            proc.join(0.5)
            raise WorkerFailure(describe_exit(proc.exitcode), "crash") from None
        if reply[0] != "ok":
            raise WorkerFailure(reply[1], reply[2])
        return reply

    def input_array(self, key: str) -> np.ndarray:
        arr = self.models[key].array
        assert arr is not None, "start() first"
        return arr

    def infer(self, key: str) -> tuple[list[np.ndarray], float]:
        """Run the model ``key`` on what its input array holds; its outputs (views of shared
        memory, valid until the next request for ``key``) and the child's invoke time.
        Raises WorkerFailure."""
        if not self._lock.acquire(timeout=self.deadline):
            raise WorkerFailure(f"no result within {self.deadline:g} s; worker busy", "hang")
        try:
            if not self.up:
                raise WorkerFailure(self.last_reason or "Edge TPU worker is down", "down")
            try:
                reply = self._call(("infer", key), timeout=self.deadline)
            except WorkerFailure as exc:  # any failure, an invoke error too, moves the streams off
                self._down_locked(exc)
                raise
            outputs = self.models[key].outputs
            assert outputs is not None
            return outputs, reply[1]
        finally:
            self._lock.release()

    # ---------------------------------------------------------------- failure and probing
    def _down_locked(self, exc: WorkerFailure) -> None:
        was_up = self.up
        self.up = False
        self.last_reason = exc.reason
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
            log.info("Edge TPU %s: worker is back (generation %d)", self.label, self.generation)

    def _kill_locked(self) -> None:
        proc, conn = self._proc, self._conn
        self._proc = self._conn = None
        if proc is None:
            return
        if proc.is_alive():
            proc.kill()
        proc.join(2.0)
        if conn is not None:
            conn.close()

    @property
    def pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None else None

    # ---------------------------------------------------------------- shutdown
    def _free_shm(self, m: _Model) -> None:
        m.array = m.outputs = None
        for block in (m.shm, m.out_shm):
            if block is not None:
                try:
                    block.close()
                    block.unlink()
                except (FileNotFoundError, BufferError):
                    pass
        m.shm = m.out_shm = None

    def close(self) -> None:
        self._closed.set()
        self._wake.set()
        got = self._lock.acquire(timeout=self.deadline + 0.5)
        try:
            proc, conn = self._proc, self._conn
            if proc is not None and proc.is_alive() and conn is not None:
                try:
                    conn.send(("quit",))
                    conn.poll(0.5)
                except (BrokenPipeError, OSError):
                    pass
                proc.join(0.5)
            self._kill_locked()
            self.up = False
            for m in self.models.values():
                self._free_shm(m)
        finally:
            if got:
                self._lock.release()
        if self._prober is not None:
            self._prober.join(1.0)
            self.board.forget(self._prober.component)  # a closed worker is no component any more
