"""The daemon: streams, the HTTP listener (edged.api), signals and shutdown."""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from typing import Any, Optional

from . import __version__
from .api import ApiServer, access_rules
from .config import Config, parse_listen
from .errors import EdgedError
from .events import EventHub, HubSink
from .metrics import Metrics
from .model import EDGETPU_CUSTOM_OP
from .pipeline import Stream

log = logging.getLogger(__name__)


class Service:
    """Everything ``edged run`` starts. ``start()``, ``wait()``, ``close()``."""

    def __init__(self, config: Config, listen: str | None = None) -> None:
        self.config = config
        self.listen = listen or config.listen
        self.metrics = Metrics()
        self.streams: list[Stream] = []
        self.workers: list[Any] = []
        self.stop_event = threading.Event()
        self.http: Optional[ApiServer] = None
        self.events = EventHub(config.http.max_event_clients)
        self.tpus: list[Any] = []
        self.started = time.time()
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
        token, open_paths = access_rules(self.config.http, host)
        # load every model (and start the Edge TPU workers) first: a bad model is reported
        # before anything starts
        from .edgetpu import list_edge_tpus
        from .failover import build_engines

        self.tpus = tpus = list_edge_tpus()
        self.metrics.watch_temperatures(tpus)
        engines, self.workers = build_engines(self.config, self.metrics, tpus)
        try:
            self.streams = [Stream(cfg, self.metrics, engines[cfg.id]) for cfg in self.config.streams]
        except BaseException:
            self._close_workers()
            raise
        for s in self.streams:
            s.sinks.append(HubSink(self.events))  # results to Server-Sent Events clients
        # sinks that report on the whole device (the MQTT status) get the device summary
        for s in self.streams:
            for sink in s.sinks:
                bind = getattr(sink, "bind_summary", None)
                if bind is not None:
                    bind(self.summary)
        try:
            self.http = ApiServer((host, port), self, token, open_paths)
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
        log.info(
            "edged %s on %s: live page at http://%s/, metrics at /metrics%s",
            __version__,
            self.config.device,
            self.address,
            " (bearer token required)" if token else "",
        )

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

    # ---------------------------------------------------------------- status
    def health(self) -> tuple[bool, dict[str, Any]]:
        failed = {s.id: s.last_error for s in self.streams if s.state == "failed"}
        return not failed, {"streams": {s.id: s.state for s in self.streams}, **({"failed": failed} if failed else {})}

    def stream(self, sid: str) -> Optional[Stream]:
        return next((s for s in self.streams if s.id == sid), None)

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready: every stream has its model loaded (it exists) and has produced a result."""
        streams = {}
        for s in self.streams:
            if s.state == "failed":
                streams[s.id] = f"failed: {s.last_error}"
            elif s.first_result.is_set():
                streams[s.id] = "ready"
            elif s.source_state == "connecting":
                streams[s.id] = f"waiting for its source: {s.source_error}"
            else:
                streams[s.id] = "waiting for its first result"
        ok = bool(streams) and all(v == "ready" for v in streams.values())
        return ok, {"streams": streams}

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
        models: dict[str, dict[str, Any]] = {}
        for s in self.streams:
            info = s.engine.info
            m = models.setdefault(
                info.name,
                {
                    "name": info.name,
                    "task": info.task,
                    "runtime": info.runtime,
                    "edgetpu_compiled": EDGETPU_CUSTOM_OP in info.custom_ops,
                    "input": list(info.input.shape),
                    "streams": [],
                },
            )
            m["streams"].append(s.id)

        def on(s: Stream) -> str:  # where the stream's model runs now: "cpu" or the TPU's label
            if s.engine.accelerator != "edgetpu":
                return "cpu"
            return (s.engine.status().get("device") if hasattr(s.engine, "status") else None) or "edgetpu"

        used = {getattr(w, "label", None) for w in self.workers}
        accelerators = [{"type": "cpu", "name": "cpu", "streams": [s.id for s in self.streams if on(s) == "cpu"]}]
        for t in self.tpus:
            name = f"{t.type}:{t.index}"
            accelerators.append(
                {
                    "type": "edgetpu",
                    "name": name,
                    "path": t.path,
                    "in_use": name in used,
                    "streams": [s.id for s in self.streams if on(s) == name],
                }
            )
        return {
            "device": self.config.device,
            "version": __version__,
            "uptime_seconds": round(time.time() - self.started, 1),
            "streams": [s.status() for s in self.streams],
            "models": list(models.values()),
            "accelerators": accelerators,
            "event_clients": self.events.clients,
        }
