"""The connections of the HTTP listener: accepted, their request heads read, then given a thread.

A slow client must not starve the others, so a connection costs no thread until its
request head has arrived. The listener thread accepts connections and reads their heads
itself (non-blocking, one selector): each has ``HEAD_SECONDS`` in all to send its request
line and headers, however slowly the bytes trickle, then it is closed. At most
``MAX_PENDING`` connections wait for their heads; beyond, the one that has waited longest
is closed. A complete head (or ``HEAD_PEEK`` bytes of one, or the client's end of it) is
classified by its path and runs in a thread of its pool:

* ``health`` (/healthz, /readyz, /metrics): ``HEALTH_SLOTS`` threads that nothing else may
  take, and the ``api`` pool's when they are busy;
* ``api`` (everything else): ``API_SLOTS`` threads. An event stream is set up in one and
  gives it back once it streams (:meth:`Conn.release`): from then on it counts against
  ``http.max_event_clients`` (the event hub's bound) only.

A pool that is full answers 503 at once. Every refusal is counted by :meth:`Listener.rejected`.
"""

from __future__ import annotations

import ctypes
import io
import selectors
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import HTTPServer
from typing import Callable, Optional
from urllib.parse import unquote, urlsplit

HEAD_SECONDS = 10.0  # to send the whole request head, from the connection's accept
HEAD_PEEK = 8192  # bytes of a head enough to classify it; the rest is read in its thread (same deadline)
MAX_PENDING = 256  # connections waiting for their heads at once
HEALTH_SLOTS = 8
API_SLOTS = 32
HEALTH_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
MALLOC_ARENAS = 2  # glibc's malloc arenas (M_ARENA_MAX): not one per request thread, each keeping its memory
BUSY = (
    b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
    b'Connection: close\r\n\r\n{"error": "too many connections"}\n'
)


@dataclass(eq=False)
class Conn:
    """One accepted connection: its socket, what it sent so far, its deadline, its thread's slot."""

    sock: socket.socket
    addr: tuple[str, int]
    deadline: float
    head: bytearray = field(default_factory=bytearray)
    expired: bool = False  # the deadline passed while its head was read
    _release: Optional[Callable[[], None]] = None

    def complete(self) -> bool:
        return b"\r\n\r\n" in self.head or len(self.head) >= HEAD_PEEK

    def path(self) -> str:
        line = bytes(self.head.split(b"\r\n", 1)[0])
        parts = line.split()
        try:
            return unquote(urlsplit(parts[1].decode("latin-1")).path) if len(parts) >= 2 else ""
        except ValueError:
            return ""

    def release(self) -> None:
        """Give the thread's slot back (once; an event stream does when it starts streaming)."""
        release, self._release = self._release, None
        if release is not None:
            release()


class DeadlineReader(io.RawIOBase):
    """The request bytes of a connection: what the listener read of its head, then the socket, until
    the deadline (raising ``TimeoutError`` once it has passed, however slowly the bytes came)."""

    def __init__(self, conn: Conn, write_timeout: float) -> None:
        self._conn = conn
        self._prefix = memoryview(bytes(conn.head))
        self._write_timeout = write_timeout

    def readable(self) -> bool:
        return True

    def readinto(self, buf: memoryview) -> int:  # type: ignore[override]
        if self._prefix:
            n = min(len(buf), len(self._prefix))
            buf[:n] = self._prefix[:n]
            self._prefix = self._prefix[n:]
            return n
        left = self._conn.deadline - time.monotonic()
        if left <= 0:
            self._conn.expired = True
            raise TimeoutError("the request head took too long")
        self._conn.sock.settimeout(left)
        try:
            return self._conn.sock.recv_into(buf)
        except TimeoutError:
            self._conn.expired = True
            raise
        finally:
            self._conn.sock.settimeout(self._write_timeout)  # what follows is the answer's writes


def bound_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Tell glibc's malloc to share ``arenas`` arenas among all threads (True when it could).

    Left alone, glibc gives threads up to 8 arenas per core, and each keeps what it freed: 32
    snapshot clients (a JPEG and a copy of the frame each, allocated in their threads) raised the
    daemon's RSS by ~100 MB for good; with 2 arenas it stays within ~15 MB. ``MALLOC_ARENA_MAX`` in
    the environment does the same from the start; elsewhere than glibc this does nothing."""
    try:
        return ctypes.CDLL(None).mallopt(-8, arenas) == 1  # M_ARENA_MAX
    except (OSError, AttributeError):  # not glibc
        return False


class Listener(HTTPServer):
    """An ``HTTPServer`` whose ``serve_forever`` reads request heads itself and runs each request
    in a thread of its pool (see the module's description)."""

    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, addr: tuple[str, int], handler: type) -> None:
        if ":" in addr[0]:
            self.address_family = socket.AF_INET6
        self._pools = {"health": threading.BoundedSemaphore(HEALTH_SLOTS), "api": threading.BoundedSemaphore(API_SLOTS)}
        self._pending: dict[socket.socket, Conn] = {}  # in accept order
        self._stop = threading.Event()
        self._stopped = threading.Event()
        self._stopped.set()
        bound_malloc_arenas()
        super().__init__(addr, handler)

    # ------------------------------------------------------------------ hooks
    def rejected(self, reason: str) -> None:
        """A connection refused or closed: ``busy``, ``deadline`` or ``slow_reader``."""

    def serving(self) -> None:
        """The loop runs (again)."""

    def run(self, conn: Conn) -> None:
        """Answer the request of ``conn`` (in its thread)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ the loop
    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Until :meth:`shutdown` (for good). An exception here ends it: the service's guard reports
        it to the health board and calls it again (:meth:`serving` then says so)."""
        self._stopped.clear()
        self.socket.setblocking(False)
        try:
            with selectors.DefaultSelector() as sel:
                sel.register(self.socket, selectors.EVENT_READ)
                self.serving()
                while not self._stop.is_set():
                    for key, _ in sel.select(min(poll_interval, 0.25)):
                        if key.fileobj is self.socket:
                            self._accept(sel)
                        else:  # (one closed earlier in this batch, by an accept over the bound, is gone)
                            conn = self._pending.get(key.fileobj)  # type: ignore[call-overload]
                            if conn is not None:
                                self._read(sel, conn)
                    self._expire(sel)
        finally:
            for conn in list(self._pending.values()):
                self._close(conn)
            self._pending.clear()
            self._stopped.set()

    def shutdown(self) -> None:
        self._stop.set()
        self._stopped.wait(5)

    def _accept(self, sel: selectors.BaseSelector) -> None:
        for _ in range(64):
            try:
                sock, addr = self.socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # out of file descriptors, a connection reset before accept
                return
            sock.setblocking(False)
            if len(self._pending) >= MAX_PENDING:  # the one that has waited longest goes
                oldest = next(iter(self._pending.values()))
                self._forget(sel, oldest)
                self._close(oldest)
                self.rejected("busy")
            conn = Conn(sock, addr, time.monotonic() + HEAD_SECONDS)
            self._pending[sock] = conn
            sel.register(sock, selectors.EVENT_READ)

    def _read(self, sel: selectors.BaseSelector, conn: Conn) -> None:
        try:
            data = conn.sock.recv(HEAD_PEEK - len(conn.head))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        conn.head += data
        if not data and not conn.head:  # gone before it said anything
            self._forget(sel, conn)
            self._close(conn)
        elif not data or conn.complete():  # a head, or all the client will send of one
            self._forget(sel, conn)
            self._dispatch(conn)

    def _expire(self, sel: selectors.BaseSelector) -> None:
        now = time.monotonic()
        for conn in list(self._pending.values()):
            if conn.deadline > now:
                break  # in accept order: the others are younger
            self._forget(sel, conn)
            self._close(conn)
            self.rejected("deadline")

    def _forget(self, sel: selectors.BaseSelector, conn: Conn) -> None:
        self._pending.pop(conn.sock, None)
        sel.unregister(conn.sock)

    def _dispatch(self, conn: Conn) -> None:
        pools = ("health", "api") if conn.path() in HEALTH_PATHS else ("api",)
        for name in pools:
            pool = self._pools[name]
            if pool.acquire(blocking=False):
                conn._release = pool.release
                break
        else:
            try:
                conn.sock.send(BUSY)
            except OSError:
                pass
            self._close(conn)
            self.rejected("busy")
            return
        conn.sock.setblocking(True)
        try:
            threading.Thread(target=self._thread, args=(conn,), name="http-request", daemon=True).start()
        except BaseException:
            conn.release()
            self._close(conn)
            raise

    def _thread(self, conn: Conn) -> None:
        try:
            self.run(conn)
        finally:
            conn.release()
            self._close(conn)

    def _close(self, conn: Conn) -> None:
        try:
            conn.sock.shutdown(socket.SHUT_WR)  # as socketserver does: what was written is sent
        except OSError:
            pass
        conn.sock.close()
