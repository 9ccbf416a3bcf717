"""The parent's side of an Edge TPU worker's requests: shared-memory slots, the child's link,
one request in flight (:mod:`edged.worker` drives them)."""

from __future__ import annotations

import logging
import queue
import signal
import threading
import time
from dataclasses import dataclass
from multiprocessing import shared_memory
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import WorkerFailure
from .worker_child import output_views, outputs_size

if TYPE_CHECKING:
    from .worker import DeviceWorker

log = logging.getLogger("edged.worker")

SLOTS = 3  # shared-memory slots per model: one being invoked, one waiting in the pipe, one being decoded


@dataclass
class _Slot:
    shm: shared_memory.SharedMemory
    out_shm: shared_memory.SharedMemory
    array: np.ndarray  # the input, [1, H, W, C]
    outputs: dict[int, np.ndarray]  # output tensor index -> its view in out_shm

    def free(self) -> None:
        """Unlink both blocks; each is unmapped once no view of it is left (a view held elsewhere
        keeps its mapping alive, so nothing reads freed memory)."""
        self.array = np.empty(0, np.uint8)
        self.outputs = {}
        for block in (self.shm, self.out_shm):
            try:
                block.unlink()
            except FileNotFoundError:
                pass
            try:
                block.close()
            except BufferError:
                pass


@dataclass
class _Model:
    key: str
    path: str
    threads: int | None
    info: Any = None
    slots: list[_Slot] | None = None
    free: queue.Queue[int] | None = None  # the slots no request holds
    first_inference_seconds: float | None = None


class _Link:
    """One child process, its pipe and the requests in flight on it. After start-up its reply
    thread owns the pipe's reading end (and closes it)."""

    def __init__(self, proc: Any, conn: Any) -> None:
        self.proc = proc
        self.conn = conn
        self.lock = threading.Lock()  # sends, and the table of requests in flight
        self.pending: dict[int, Request] = {}
        self.failure: WorkerFailure | None = None  # set once: why this child is done
        self.reader: threading.Thread | None = None


class Request:
    """One inference in flight in the worker: its slot until :meth:`release`."""

    __slots__ = ("id", "worker", "model", "slot", "link", "sent", "answered", "done", "seconds", "failure")

    def __init__(self, rid: int, worker: DeviceWorker, model: _Model, slot: int, link: _Link) -> None:
        self.id, self.worker, self.model, self.slot, self.link = rid, worker, model, slot, link
        self.sent = 0.0  # time.monotonic() of the send: the deadline runs from it
        self.answered = 0.0  # time.perf_counter() of the reply
        self.done = threading.Event()
        self.seconds = 0.0
        self.failure: WorkerFailure | None = None

    def wait(self) -> tuple[dict[int, np.ndarray], float]:
        """The outputs (views of the slot, valid until :meth:`release`) and the child's invoke
        time. Raises WorkerFailure: no answer within the deadline of the send, a crash, an error."""
        w = self.worker
        if not self.done.wait(max(0.0, w.deadline - (time.monotonic() - self.sent))):
            w._fail(self.link, WorkerFailure(f"no result within {w.deadline:g} s; worker killed", "hang"))
            self.done.wait(3.0)  # the reply thread fails every request in flight once the child is gone
            if self.failure is None:
                self.failure = self.link.failure
        if self.failure is not None:
            raise self.failure
        assert self.model.slots is not None
        return self.model.slots[self.slot].outputs, self.seconds

    def release(self) -> None:
        """The slot is free for another request (call once, after reading the outputs)."""
        if self.slot >= 0 and self.model.free is not None:
            self.model.free.put(self.slot)
        self.slot = -1

    def _finish(self, seconds: float | None, failure: WorkerFailure | None) -> None:
        self.answered = time.perf_counter()
        self.seconds = seconds or 0.0
        self.failure = failure
        self.done.set()


def describe_exit(code: int | None) -> str:
    if code is None:
        return "worker stopped answering"
    if code < 0:
        try:
            return f"worker killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"worker killed by signal {-code}"
    return f"worker exited with code {code}"


def start_call(link: _Link, msg: tuple[Any, ...], timeout: float) -> tuple[Any, ...]:
    """One request and its reply, before the reply thread runs (start-up)."""
    conn, proc = link.conn, link.proc
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


def make_slots(m: _Model) -> None:
    """The model's shared-memory slots, made once (kept across restarts of the child)."""
    shape, dtype = tuple(m.info.input.shape), np.dtype(m.info.input.dtype)
    if m.slots is not None and m.slots[0].array.shape == shape and m.slots[0].array.dtype == dtype:
        return
    for slot in m.slots or []:
        slot.free()
    size, out_size = int(np.prod(shape)) * dtype.itemsize, outputs_size(m.info)
    m.slots = []
    for _ in range(SLOTS):
        shm = shared_memory.SharedMemory(create=True, size=size)
        out_shm = shared_memory.SharedMemory(create=True, size=out_size)
        views = output_views(m.info, out_shm.buf)
        outputs = {t.index: v for t, v in zip(m.info.outputs, views)}
        m.slots.append(_Slot(shm, out_shm, np.ndarray(shape, dtype=dtype, buffer=shm.buf), outputs))
    m.free = queue.Queue()
    for i in range(SLOTS):
        m.free.put(i)


def read_replies(worker: DeviceWorker, link: _Link) -> None:
    """The reply thread of one child: each reply to its request; when the pipe ends, every
    request still in flight fails with the reason (a crash, or why the worker was killed)."""
    try:
        while True:
            try:
                reply = link.conn.recv()
            except Exception:  # EOF, or the pipe closed under it: the child is gone
                break
            if reply[0] == "ok" and len(reply) == 3:
                with link.lock:
                    req = link.pending.pop(reply[1], None)
                if req is not None:
                    req._finish(reply[2], None)
            elif reply[0] == "err":  # an invoke error too moves the streams off
                worker._fail(link, WorkerFailure(reply[1], reply[2]))
    except BaseException as exc:  # never silently: the worker is failed, and its streams move
        log.exception("Edge TPU %s: the reply thread failed", worker.label)
        worker._fail(link, WorkerFailure(f"reply thread failed: {type(exc).__name__}: {exc}", "crash"))
    finally:
        link.proc.join(0.5)
        failure = WorkerFailure(describe_exit(link.proc.exitcode), "crash")
        worker._fail(link, failure)
        with link.lock:
            failure = link.failure or failure
            pending, link.pending = list(link.pending.values()), {}
        for req in pending:
            req._finish(None, failure)
        try:
            link.conn.close()
        except OSError:
            pass


def end_resource_tracker() -> None:
    """End multiprocessing's resource tracker, the child process the workers' shared memory starts.

    Left running at the daemon's exit, it outlives the main process for a moment and systemd kills it
    (``KillMode=mixed``: SIGKILL to what is left of the unit once the main process has exited), a
    SIGKILL line in the journal at every stop. Each segment is unlinked by then, so it has nothing to
    clean up; one that is not is named by it on stderr (``leaked shared_memory objects``) and unlinked.
    """
    from multiprocessing import resource_tracker

    tracker = resource_tracker._resource_tracker
    try:
        if tracker._fd is not None:  # started in this process
            tracker._stop()
    except Exception as exc:  # a private API: its change must not stop the daemon's exit
        log.debug("resource tracker: %s", exc)
