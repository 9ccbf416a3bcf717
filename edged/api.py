"""The HTTP listener: /metrics, health, the JSON API, Server-Sent Events, snapshots, the live page.

The standard library's ``http.server`` handlers on :class:`~edged.listener.Listener`, which
reads each request head without a thread (``HEAD_SECONDS`` in all to send it, however slowly)
and runs the request in a thread of its pool: health, readiness and metrics have slots of
their own (nothing to install on a Pi). What a client sends is bounded: the request line
(2 KiB), the headers (http.server's 64 KiB and 100 lines), the connections waiting for their
heads and the threads of each pool (more get 503), the time to take a write
(``WRITE_SECONDS``), and the event clients (``http.max_event_clients``), each of which is
dropped once its buffers (``EVENT_SNDBUF`` on our side) stay full for ``SLOW_READER_SECONDS``.
No endpoint takes a body; a request with one is refused with 413 unless it is tiny. Every
error is a JSON object ``{"error": "..."}`` with a 4xx status, never a traceback.

Off loopback a bearer token is required (see :func:`edged.access.access_rules`); ``/`` (the page, a
static file with no data in it) is always open, and so is whatever ``http.open`` lists.
"""

from __future__ import annotations

import hmac
import io
import json
import logging
import re
import select
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler
from importlib import resources
from typing import TYPE_CHECKING, Any, Callable, Optional
from urllib.parse import parse_qs, unquote, urlsplit

from . import __version__
from .config import STREAM_ID
from .events import TYPES
from .listener import Conn, DeadlineReader, Listener
from .metrics import CONTENT_TYPE_LATEST

if TYPE_CHECKING:
    from .daemon import Service
    from .stream import Stream

log = logging.getLogger(__name__)

MAX_REQUEST_LINE = 2048
MAX_BODY = 1024  # bytes of a body read and ignored; more is refused (no endpoint takes one)
WRITE_SECONDS = 10.0  # a write of an answer that takes longer closes the connection
EVENT_SNDBUF = 32768  # bytes the kernel queues for an event client (no autotuning to megabytes)
SLOW_READER_SECONDS = 3.0  # an event client whose buffers are full for this long is dropped
KEEPALIVE_SECONDS = 15.0  # an event stream sends a comment this often when there are no results
_STREAM_PATH = re.compile(rf"^/api/v1/streams/({STREAM_ID})/(latest|snapshot\.jpg)$")


def _web_file(name: str) -> bytes:
    return resources.files("edged.web").joinpath(name).read_bytes()


class SnapshotCache:
    """The latest frame of each stream with its result drawn, as JPEG: encoded at most once per frame.

    The encode runs under the stream's own lock, so clients asking for the same frame at once
    wait for the one encode and get its bytes; one JPEG per stream is kept."""

    def __init__(self, on_encode: Optional[Callable[[str], None]] = None) -> None:
        self._lock = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._snapshots: dict[str, tuple[int, float, bytes]] = {}  # stream -> (seq, timestamp, jpeg)
        self._on_encode = on_encode

    def get(self, stream: Stream) -> Optional[bytes]:
        with self._lock:
            lock = self._locks.setdefault(stream.id, threading.Lock())
        with lock:
            pair = stream.latest_frame  # read under the lock: the newest once the encode before is done
            if pair is None:
                return None
            result, image = pair
            cached = self._snapshots.get(stream.id)
            if cached is not None and cached[0] == result.seq and cached[1] == result.timestamp:
                return cached[2]
            from .draw import annotate, jpeg

            zones = stream.scene.overlay(result.frame_width, result.frame_height) if stream.scene else ()
            body = jpeg(annotate(image, result.to_dict(), zones))
            self._snapshots[stream.id] = (result.seq, result.timestamp, body)
        if self._on_encode is not None:
            self._on_encode(stream.id)
        return body


class ApiServer(Listener):
    def __init__(
        self, addr: tuple[str, int], service: Service, token: Optional[str], open_paths: frozenset[str]
    ) -> None:
        self.service = service
        self.token = token
        self.open_paths = open_paths
        metrics = service.metrics
        self.snapshots = SnapshotCache(lambda sid: metrics.snapshot_encodes.labels(sid).inc())
        self._page: Optional[bytes] = None
        self._openapi: Optional[bytes] = None
        super().__init__(addr, Handler)

    def rejected(self, reason: str) -> None:
        self.service.metrics.http_rejected.labels(reason).inc()

    def serving(self) -> None:
        self.service.board.ok("http")  # (again, after a failure of the loop the guard reported)

    def run(self, conn: Conn) -> None:
        try:
            Handler(conn, self)
        except OSError:  # the client went away, or its deadline passed
            pass
        except Exception:  # a handler bug: logged once, with its traceback, in our log (not on stderr)
            log.exception("http: error while answering %s", conn.addr[0])
        if conn.expired:
            self.rejected("deadline")

    # ------------------------------------------------------------------ cached bodies
    def page(self) -> bytes:
        if self._page is None:
            self._page = _web_file("index.html")
        return self._page

    def openapi(self) -> bytes:
        if self._openapi is None:
            spec = json.loads(_web_file("openapi.json"))
            spec["info"]["version"] = __version__
            self._openapi = (json.dumps(spec, indent=1) + "\n").encode()
        return self._openapi


class _BadRequest(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class Handler(BaseHTTPRequestHandler):
    server: ApiServer
    server_version = f"edged/{__version__}"
    sys_version = ""
    default_request_version = "HTTP/1.0"  # a status line even for a request too broken to name its version
    timeout = WRITE_SECONDS  # a write that takes longer closes the connection

    def __init__(self, conn: Conn, server: ApiServer) -> None:
        self.conn = conn
        super().__init__(conn.sock, conn.addr, server)

    def setup(self) -> None:
        super().setup()
        self.rfile.close()
        self.rfile = io.BufferedReader(DeadlineReader(self.conn, WRITE_SECONDS))  # the head, within its deadline

    def log_message(self, fmt: str, *args: Any) -> None:  # access log at DEBUG, never per scrape at INFO
        log.debug("http %s %s", self.address_string(), fmt % args)

    def log_error(self, fmt: str, *args: Any) -> None:
        log.debug("http %s %s", self.address_string(), fmt % args)

    def send_error(self, code: int, message: Optional[str] = None, explain: Optional[str] = None) -> None:
        # http.server's own refusals (bad request line, header too long, bad version): JSON too
        self.close_connection = True
        try:
            self._json(code, {"error": message or self.responses.get(code, ("error",))[0]})
        except OSError:
            pass

    # ------------------------------------------------------------------ responses
    def _send(self, code: int, body: bytes, ctype: str = "application/json", headers: Optional[dict] = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, code: int, obj: Any, headers: Optional[dict] = None) -> None:
        self._send(code, (json.dumps(obj) + "\n").encode(), headers=headers)

    # ------------------------------------------------------------------ checks
    def _authorized(self, path: str) -> bool:
        token = self.server.token
        if token is None or path in self.server.open_paths:
            return True
        scheme, _, cred = (self.headers.get("Authorization") or "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(cred.strip().encode(), token.encode())

    def _check_body(self) -> None:
        length = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding"):
            raise _BadRequest(411 if length is None else 400, "request bodies are not accepted")
        if length is None:
            return
        try:
            n = int(length)
        except ValueError:
            raise _BadRequest(400, "Content-Length is not a number") from None
        if n < 0:
            raise _BadRequest(400, "Content-Length is negative")
        if n > MAX_BODY:
            raise _BadRequest(413, "request bodies are not accepted")
        if n:
            self.rfile.read(n)  # small: read and ignore, so the connection stays in step

    # ------------------------------------------------------------------ dispatch
    def do_GET(self) -> None:  # noqa: N802
        self.close_connection = True  # one request per connection: no idle keep-alive threads
        try:
            if len(self.requestline) > MAX_REQUEST_LINE:
                raise _BadRequest(414, "request line too long")
            self._check_body()
            parts = urlsplit(self.path)
            path = unquote(parts.path)
            try:
                query = parse_qs(parts.query, keep_blank_values=True, strict_parsing=False, max_num_fields=16)
            except ValueError:
                raise _BadRequest(400, "too many query parameters") from None
            if not self._authorized(path):
                self._json(
                    401,
                    {"error": "a bearer token is required (Authorization: Bearer <token>)"},
                    {"WWW-Authenticate": 'Bearer realm="edged"'},
                )
                return
            self._route(path, query)
        except _BadRequest as exc:
            self._json(exc.code, {"error": str(exc)})
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass

    do_HEAD = do_GET

    def _not_allowed(self) -> None:
        self.close_connection = True
        self._json(405, {"error": f"method {self.command} not allowed; the API is read-only"}, {"Allow": "GET, HEAD"})

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _not_allowed

    def _route(self, path: str, query: dict[str, list[str]]) -> None:
        service = self.server.service
        if path == "/metrics":
            self._send(200, service.metrics.exposition(), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            ok, detail = service.health()
            self._json(200 if ok else 503, {"status": "ok" if ok else "failing", **detail})
        elif path == "/readyz":
            ok, detail = service.readiness()
            self._json(200 if ok else 503, {"status": "ready" if ok else "not ready", **detail})
        elif path == "/api/v1/status":
            self._json(200, service.status())
        elif path == "/api/v1/events":
            self._events(query)
        elif path == "/api/v1/openapi.json":
            self._send(200, self.server.openapi())
        elif path in ("/", "/index.html"):
            self._send(200, self.server.page(), "text/html; charset=utf-8", {"Content-Security-Policy": _CSP})
        else:
            m = _STREAM_PATH.match(path)
            stream = service.stream(m.group(1)) if m else None
            if m is None or stream is None:
                what = f"no stream {m.group(1)!r}" if m else f"no such path: {path[:200]}"
                raise _BadRequest(404, what)
            if m.group(2) == "latest":
                result = stream.latest
                if result is None:
                    raise _BadRequest(404, f"stream {stream.id!r} has no result yet")
                self._send(200, (result.to_json() + "\n").encode())
            else:
                body = self.server.snapshots.get(stream)
                if body is None:
                    raise _BadRequest(404, f"stream {stream.id!r} has no frame yet")
                self._send(200, body, "image/jpeg")

    # ------------------------------------------------------------------ Server-Sent Events
    def _events(self, query: dict[str, list[str]]) -> None:
        service = self.server.service
        unknown = set(query) - {"stream", "types"}
        if unknown:
            raise _BadRequest(400, f"unknown query parameter {sorted(unknown)[0]!r}; stream= and types= are known")
        types = frozenset(t for v in query.get("types", []) for t in v.split(",") if t) or TYPES
        if types - TYPES:
            raise _BadRequest(400, f"unknown type {sorted(types - TYPES)[0][:32]!r} in types=; result and event are")
        wanted = query.get("stream")
        if wanted is not None:
            missing = [s for s in wanted if service.stream(s) is None]
            if missing:
                raise _BadRequest(404, f"no stream {missing[0][:64]!r}")
        if self.command == "HEAD":
            self._send(200, b"", "text/event-stream")
            return
        sub = service.events.subscribe(frozenset(wanted) if wanted else None, types)
        if sub is None:
            raise _BadRequest(503, f"too many event clients (at most {service.events.max_clients})")
        self.conn.release()  # a stream now: counted by the hub, not in the API's threads
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, EVENT_SNDBUF)
        self.connection.settimeout(SLOW_READER_SECONDS)
        try:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Accel-Buffering", "no")
            self.end_headers()
            self.wfile.write(b"retry: 2000\n\n")
            self.wfile.flush()
            beat = time.monotonic()
            while not service.events.closed and not self._client_gone():
                events, lost = sub.take(1.0)
                chunks = []
                if lost:
                    chunks.append(f'event: lost\ndata: {{"lost": {lost}}}\n\n')
                for eid, kind, data in events:
                    chunks.append(f"id: {eid}\nevent: {kind}\ndata: {data}\n\n")
                if not chunks and time.monotonic() - beat >= KEEPALIVE_SECONDS:
                    chunks.append(": keep-alive\n\n")
                if chunks:
                    self.wfile.write("".join(chunks).encode())
                    self.wfile.flush()
                    beat = time.monotonic()
        except TimeoutError:  # it stopped reading: its buffers are full and a write waited too long
            self.server.rejected("slow_reader")
        except OSError:  # the client went away
            pass
        finally:
            sub.close()

    def _client_gone(self) -> bool:
        """True once the client closed its end (an event client sends nothing after its request)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and not self.connection.recv(1, socket.MSG_PEEK)
        except (OSError, ValueError):
            return True


# the page loads nothing from anywhere but this device
_CSP = "; ".join(
    (
        "default-src 'self'",
        "img-src 'self' blob: data:",
        "style-src 'self' 'unsafe-inline'",
        "script-src 'self' 'unsafe-inline'",
    )
)
