"""The daemon: builds the streams and their parts, serves HTTP, runs until stopped.

Its parts, each in its own module: :mod:`.supervisor` (systemd READY/STATUS/WATCHDOG),
:mod:`.reload` (SIGHUP: a pure plan, then its application), :mod:`.views` (health,
readiness, status, the MQTT summary), :mod:`edged.api` (the HTTP listener).
"""

from __future__ import annotations

import logging
import signal
import socket
import sys
import threading
import time
from typing import Any, Optional

from .. import __version__
from ..access import access_rules
from ..api import ApiServer
from ..config import Config, StreamConfig, load_config, parse_listen
from ..doctor.live import TpuWatch
from ..edgetpu import EdgeTpu, list_edge_tpus
from ..errors import ConfigError, EdgedError
from ..events import EventHub, HubSink
from ..health import GuardedThread, HealthBoard
from ..inference import InferenceEngine
from ..inference.placement import build_engines
from ..metrics import Metrics
from ..sdnotify import Notifier
from ..sinks.mqtt import MqttPool
from ..stream import Stream
from ..worker import DeviceWorker
from ..worker_requests import end_resource_tracker
from . import views
from .reload import apply_reload, plan_reload
from .supervisor import Supervisor
from .wiring import build_stream

log = logging.getLogger("edged.service")

STOP_SECONDS = 1.0  # all streams stop together within this


class Service:
    """Everything ``edged run`` starts. ``start()``, ``wait()``, ``close()``."""

    def __init__(
        self,
        config: Config,
        listen: Optional[str] = None,
        config_path: Optional[str] = None,
        notifier: Optional[Notifier] = None,
    ) -> None:
        self.config = config
        self.config_path = config_path  # re-read on SIGHUP; None: nothing to re-read (the demo)
        self.notifier = notifier or Notifier()
        self.listen = listen or config.listen
        self._listen_from_cli = listen is not None
        self.reload_event = threading.Event()
        self.ready = threading.Event()  # READY=1 sent (or would have been, outside systemd)
        self._lock = threading.RLock()  # a reload swapping the streams, against the supervisor and close()
        self.metrics = Metrics()
        self.board = HealthBoard(self.metrics)  # the components with threads of their own report here
        self.streams: list[Stream] = []
        self.workers: list[DeviceWorker] = []
        self.stop_event = threading.Event()
        self.http: Optional[ApiServer] = None
        self.events = EventHub(config.http.max_event_clients)
        self.mqtt = MqttPool()  # one connection per broker, shared by the streams' mqtt sinks
        self.mqtt.bind_summary(self.summary)  # the retained status tells of the whole device
        self.tpus: list[EdgeTpu] = []
        self.tpu_watch = TpuWatch([])
        self.started = time.time()
        self._http_thread: Optional[GuardedThread] = None

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> None:
        # Threads hand the GIL back after 1 ms instead of 5: the inference thread releases it
        # in resize/cvtColor/invoke and must not wait 5 ms to get it back from a capture thread
        sys.setswitchinterval(0.001)
        try:
            host, port = parse_listen(self.listen)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        token, open_paths = access_rules(self.config.http, host)
        # load every model (and start the Edge TPU workers) first: a bad model is reported
        # before anything starts
        self.tpus = list_edge_tpus()
        self.metrics.watch_temperatures(self.tpus)
        self.tpu_watch = TpuWatch(self.tpus)
        self.tpu_watch.poll()  # a slow link or a hot TPU: said at start
        engines, self.workers = build_engines(self.config, self.metrics, self.tpus, self.board)
        try:
            self.streams = [self.build_stream(cfg, engines[cfg.id]) for cfg in self.config.streams]
            self.http = self._bind(host, port, token, open_paths)
            self._start_streams()
        except BaseException:
            self.close_workers()
            raise
        # the port is bound above (a taken port fails before anything starts); requests are
        # answered from here on, once every stream has started
        self._http_thread = GuardedThread("http", self.http.serve_forever, self.board, self.stop_event)
        self._http_thread.start()
        supervisor = Supervisor(
            self.notifier, lambda: self.streams, self.board, self._lock, self.stop_event, self.ready,
            self.tpu_watch.tick,
        )  # fmt: skip
        supervisor.start()
        log.info(
            "edged %s on %s: live page at http://%s/, metrics at /metrics%s",
            __version__, self.config.device, self.address, " (bearer token required)" if token else "",
        )  # fmt: skip

    def _bind(self, host: str, port: int, token: Optional[str], open_paths: frozenset[str]) -> ApiServer:
        try:
            return ApiServer((host, port), self, token, open_paths)
        except OSError as exc:
            raise EdgedError(
                f"cannot listen on {self.listen}: {exc.strerror}; choose another with --listen or listen:"
            ) from None

    def _start_streams(self) -> None:
        started: list[Stream] = []
        try:
            for s in self.streams:
                s.start()
                started.append(s)
        except BaseException:
            self.stop_streams(started)
            assert self.http is not None
            self.http.server_close()
            self.http = None
            raise

    def build_stream(self, cfg: StreamConfig, engine: InferenceEngine) -> Stream:
        """A stream with its source, its sinks and the event hub's sink (not started)."""
        hub = HubSink(self.events)  # results to Server-Sent Events clients
        return build_stream(cfg, self.metrics, engine, [hub], self.mqtt, self.board)

    @property
    def address(self) -> str:
        if self.http is None:
            return self.listen
        host, port = self.http.server_address[:2]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"

    def wait(self, timeout: Optional[float] = None) -> None:
        """Block until stopped (signal or ``stop()``), or until every stream has finished."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.stop_event.is_set():
            if self.reload_event.is_set():
                self.reload_event.clear()
                self.reload()
                continue
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
        # SIGHUP (systemctl reload): re-read the configuration, in wait()'s thread
        signal.signal(signal.SIGHUP, lambda signum, _frame: self.reload_event.set())

    def _on_signal(self, signum: int) -> None:
        if self.stop_event.is_set():
            return
        log.info("received %s: stopping", signal.Signals(signum).name)
        self.stop_event.set()

    def close(self) -> None:
        self.notifier.notify(stopping=1, status="stopping")
        self.stop_event.set()  # the supervisor stops too
        with self._lock:
            self.stop_streams(self.streams)
            self.close_workers()
        end_resource_tracker()  # no child process left for systemd to kill
        self.mqtt.close()
        self._close_http()
        log.info("stopped")

    def stop_streams(self, streams: list[Stream]) -> None:
        """Stop ``streams`` together: each is asked first, then each is waited for."""
        for s in streams:
            s.request_stop()
        deadline = time.monotonic() + STOP_SECONDS
        for s in streams:
            s.close(timeout=max(0.0, deadline - time.monotonic()))

    def close_workers(self) -> None:
        for w in self.workers:
            w.close()
        self.workers = []

    def _close_http(self) -> None:
        self.events.close()  # event streams end
        if self.http is not None:
            self.http.shutdown()
            self.http.server_close()
            self.http = None

    def __enter__(self) -> Service:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- reload
    def reload(self) -> bool:
        """Re-read the configuration file: restart the streams that changed, keep the rest.

        An invalid configuration (unreadable, invalid, a model that does not load, a sink that
        cannot start) is refused: the reason is logged and the running configuration kept.
        The HTTP listener and the metrics stay up throughout.
        """
        if self.config_path is None:
            log.warning("reload: no configuration file to re-read (edged runs the embedded demo)")
            return False
        self.notifier.notify(reloading=1, monotonic_usec=int(time.monotonic() * 1e6), status="reloading")
        try:
            with self._lock:
                try:
                    new = load_config(self.config_path)
                    on_tpu = [s.id for s in self.streams if s.engine.status() is not None]
                    apply_reload(self, plan_reload(self.config, new, on_tpu, self._listen_from_cli))
                    return True
                except EdgedError as exc:
                    log.error("reload refused, the running configuration is kept: %s", exc)
                    return False
        finally:
            self.notifier.notify(ready=1, status=views.status_line(self.streams))

    # ---------------------------------------------------------------- views (the HTTP API's)
    def stream(self, sid: str) -> Optional[Stream]:
        return next((s for s in self.streams if s.id == sid), None)

    def health(self) -> tuple[bool, dict[str, Any]]:
        return views.health(self.streams, self.board)

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        return views.readiness(self.streams)

    def summary(self) -> dict[str, Any]:
        return views.summary(self.config.device, self.streams, self.board, self.tpus, self.page_url())

    def page_url(self) -> str:
        """The live page's address as another machine would use it (Home Assistant's link to the device)."""
        host, port = parse_listen(self.address)
        if host in ("0.0.0.0", "::", ""):
            host = socket.gethostname()
        return f"http://{'[' + host + ']' if ':' in host else host}:{port}/"

    def status_line(self) -> str:
        return views.status_line(self.streams)

    def status(self) -> dict[str, Any]:
        return views.status(
            self.config.device, self.streams, self.tpus, self.workers, self.started, self.events.clients, self.board
        )
