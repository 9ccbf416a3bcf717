"""The daemon: streams, the HTTP listener (/metrics, /healthz), signals and shutdown."""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from . import __version__
from .config import Config, parse_listen
from .errors import EdgedError
from .metrics import CONTENT_TYPE_LATEST, Metrics
from .pipeline import Stream

log = logging.getLogger(__name__)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = f"edged/{__version__}"
    sys_version = ""

    def log_message(self, fmt: str, *args: Any) -> None:  # access log at DEBUG, never per scrape at INFO
        log.debug("http %s %s", self.address_string(), fmt % args)

    def _send(self, code: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, code: int, obj: Any) -> None:
        self._send(code, (json.dumps(obj) + "\n").encode())

    def do_GET(self) -> None:  # noqa: N802
        path = self.path.split("?", 1)[0]
        service = self.server.service
        if len(self.path) > 2048:
            self._json(414, {"error": "request line too long"})
        elif path == "/metrics":
            self._send(200, service.metrics.exposition(), CONTENT_TYPE_LATEST)
        elif path == "/api/v1/status":
            self._json(200, service.status())
        elif path == "/healthz":
            ok, detail = service.health()
            self._json(200 if ok else 503, {"status": "ok" if ok else "failing", **detail})
        else:
            self._json(404, {"error": f"no such path: {path[:200]}"})

    do_HEAD = do_GET

    def _not_allowed(self) -> None:
        self.send_response(405)
        self.send_header("Allow", "GET, HEAD")
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_POST = do_PUT = do_DELETE = do_PATCH = _not_allowed


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr: tuple[str, int], service: Service) -> None:
        import socket

        if ":" in addr[0]:
            self.address_family = socket.AF_INET6
        self.service = service
        super().__init__(addr, _Handler)


class Service:
    """Everything ``edged run`` starts. ``start()``, ``wait()``, ``close()``."""

    def __init__(self, config: Config, listen: str | None = None) -> None:
        self.config = config
        self.listen = listen or config.listen
        self.metrics = Metrics()
        self.streams: list[Stream] = []
        self.workers: list[Any] = []
        self.stop_event = threading.Event()
        self.http: _Server | None = None
        self._http_thread: threading.Thread | None = None

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> None:
        # Threads hand the GIL back after 1 ms instead of 5: the inference thread releases it
        # in resize/cvtColor/invoke and must not wait 5 ms to get it back from a capture thread
        sys.setswitchinterval(0.001)
        try:
            host, port = parse_listen(self.listen)
        except ValueError as exc:
            raise EdgedError(str(exc)) from None
        # load every model (and start the Edge TPU workers) first: a bad model is reported
        # before anything starts
        from .edgetpu import list_edge_tpus
        from .failover import build_engines

        tpus = list_edge_tpus()
        self.metrics.watch_temperatures(tpus)
        engines, self.workers = build_engines(self.config, self.metrics, tpus)
        try:
            self.streams = [Stream(cfg, self.metrics, engines[cfg.id]) for cfg in self.config.streams]
        except BaseException:
            self._close_workers()
            raise
        # sinks that report on the whole device (the MQTT status) get the device summary
        for s in self.streams:
            for sink in s.sinks:
                bind = getattr(sink, "bind_summary", None)
                if bind is not None:
                    bind(self.summary)
        try:
            self.http = _Server((host, port), self)
        except OSError as exc:
            self._close_workers()
            raise EdgedError(
                f"cannot listen on {self.listen}: {exc.strerror}; choose another with --listen or listen:"
            ) from None
        started = []
        try:
            for s in self.streams:
                s.start()
                started.append(s)
        except BaseException:
            for s in started:
                s.close()
            self.http.server_close()
            self.http = None
            self._close_workers()
            raise
        # the port is bound above (a taken port fails before anything starts); requests are
        # answered from here on, once every stream has started
        self._http_thread = threading.Thread(target=self.http.serve_forever, name="http", daemon=True)
        self._http_thread.start()
        log.info("edged %s on %s: metrics at http://%s/metrics", __version__, self.config.device, self.address)

    @property
    def address(self) -> str:
        if self.http is None:
            return self.listen
        host, port = self.http.server_address[:2]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"

    def wait(self, timeout: float | None = None) -> None:
        """Block until stopped (signal or ``stop()``), or until every stream has finished."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.stop_event.is_set():
            if self.streams and all(s.finished for s in self.streams):
                log.info("every stream has finished")
                return
            remaining = 0.5 if deadline is None else min(0.5, deadline - time.monotonic())
            if remaining <= 0:
                return
            self.stop_event.wait(remaining)

    def stop(self, *_: Any) -> None:
        self.stop_event.set()

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda signum, _frame: self._on_signal(signum))

    def _on_signal(self, signum: int) -> None:
        if self.stop_event.is_set():
            return
        log.info("received %s: stopping", signal.Signals(signum).name)
        self.stop_event.set()

    def close(self) -> None:
        for s in self.streams:  # all streams stop together: shutdown stays within ~1 s
            s.request_stop()
        deadline = time.monotonic() + 1.0
        for s in self.streams:
            s.close(timeout=max(0.0, deadline - time.monotonic()))
        self._close_workers()
        self._close_http()
        log.info("stopped")

    def _close_workers(self) -> None:
        for w in self.workers:
            w.close()
        self.workers = []

    def _close_http(self) -> None:
        if self.http is not None:
            self.http.shutdown()
            self.http.server_close()
            self.http = None

    def __enter__(self) -> Service:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- status
    def health(self) -> tuple[bool, dict[str, Any]]:
        failed = {s.id: s.last_error for s in self.streams if s.state == "failed"}
        return not failed, {"streams": {s.id: s.state for s in self.streams}, **({"failed": failed} if failed else {})}

    def summary(self) -> dict[str, Any]:
        """The device in brief (the MQTT status): streams with model, accelerator, fps, state."""
        return {
            "device": self.config.device,
            "version": __version__,
            "streams": [
                {
                    "id": s.id,
                    "state": s.state,
                    "model": s.engine.info.name,
                    "accelerator": s.engine.accelerator,
                    "fps": round(s.fps(), 2),
                }
                for s in self.streams
            ],
        }

    def status(self) -> dict[str, Any]:
        return {"device": self.config.device, "version": __version__, "streams": [s.status() for s in self.streams]}
