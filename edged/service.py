"""The daemon: streams, the HTTP listener (edged.api), systemd notification, reload, shutdown."""

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
from .sdnotify import Notifier
from .sinks.mqtt import MqttPool

log = logging.getLogger(__name__)


class Service:
    """Everything ``edged run`` starts. ``start()``, ``wait()``, ``close()``."""

    STATUS_EVERY = 5.0  # seconds between two STATUS= lines to systemd

    def __init__(
        self,
        config: Config,
        listen: str | None = None,
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
        self._lock = threading.RLock()  # reload against close
        self.metrics = Metrics()
        self.streams: list[Stream] = []
        self.workers: list[Any] = []
        self.stop_event = threading.Event()
        self.http: Optional[ApiServer] = None
        self.events = EventHub(config.http.max_event_clients)
        self.tpus: list[Any] = []
        self.started = time.time()
        self._http_thread: threading.Thread | None = None
        # the MQTT connections of every stream's sinks; their retained status is the device summary
        self.mqtt_pool = MqttPool()
        self.mqtt_pool.bind_summary(self.summary)

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
            self.streams = [Stream(cfg, self.metrics, engines[cfg.id], self.mqtt_pool) for cfg in self.config.streams]
        except BaseException:
            self._close_workers()
            raise
        for s in self.streams:
            self._wire(s)
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
        self._supervisor = threading.Thread(target=self._supervise, name="supervisor", daemon=True)
        self._supervisor.start()
        log.info(
            "edged %s on %s: live page at http://%s/, metrics at /metrics%s",
            __version__,
            self.config.device,
            self.address,
            " (bearer token required)" if token else "",
        )

    def _wire(self, stream: Stream) -> None:
        stream.sinks.append(HubSink(self.events))  # results to Server-Sent Events clients

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
        signal.signal(signal.SIGHUP, lambda signum, _frame: self._on_hangup())

    def _on_hangup(self) -> None:
        self.reload_event.set()  # wait() picks it up within half a second

    def _on_signal(self, signum: int) -> None:
        if self.stop_event.is_set():
            return
        log.info("received %s: stopping", signal.Signals(signum).name)
        self.stop_event.set()

    def close(self) -> None:
        self.notifier.notify(stopping=1, status="stopping")
        self.stop_event.set()  # the supervisor stops too
        for s in self.streams:  # all streams stop together: shutdown stays within ~1 s
            s.request_stop()
        deadline = time.monotonic() + 1.0
        for s in self.streams:
            s.close(timeout=max(0.0, deadline - time.monotonic()))
        self.mqtt_pool.close()  # none left open once every stream's sinks are closed
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

    # ---------------------------------------------------------------- systemd
    def _started_up(self) -> bool:
        """Every stream has produced a result, ended, or is waiting for a source that is down.

        A camera that is off at boot does not hold the unit in "activating" until systemd
        gives up and kills everything: the stream keeps reconnecting and says so in STATUS=.
        """
        return all(
            s.first_result.is_set() or s.state != "running" or s.source_state == "connecting" for s in self.streams
        )

    def status_line(self) -> str:
        parts = []
        for s in self.streams:
            if s.state == "failed":
                parts.append(f"{s.id} failed")
            elif s.state in ("ended", "stopped"):
                parts.append(f"{s.id} {s.state}")
            elif s.source_state == "connecting":
                parts.append(f"{s.id} waiting for its source")
            elif not s.first_result.is_set():
                parts.append(f"{s.id} starting")
            else:
                parts.append(f"{s.id} {s.fps():.1f} fps on {s.engine.accelerator}")
        line = "; ".join(parts)
        return line if len(line) <= 400 else line[:397] + "..."

    def _stuck(self, limit: float) -> list[str]:
        """Running streams whose inference loop has not turned for ``limit`` seconds."""
        now = time.monotonic()
        return [s.id for s in self.streams if s.state == "running" and now - s.heartbeat > limit]

    def _supervise(self) -> None:
        """READY=1 once started up, STATUS= every few seconds, WATCHDOG=1 while no stream is stuck.

        The watchdog is fed only while every running stream's inference loop turns (it turns
        at least every 0.25 s, with or without frames): a wedged inference or a crashed
        inference thread stops the pings and systemd restarts the daemon.
        """
        n = self.notifier
        wd = n.watchdog_seconds
        next_status = 0.0
        next_ping = 0.0
        stuck_said: set[str] = set()
        while not self.stop_event.wait(0.25):
            now = time.monotonic()
            with self._lock:
                if not self.ready.is_set() and self._started_up():
                    self.ready.set()
                    line = self.status_line()
                    n.notify(ready=1, status=line)
                    log.info("ready: %s", line)
                    next_status = now + self.STATUS_EVERY
                elif now >= next_status:
                    n.notify(status=self.status_line())
                    next_status = now + self.STATUS_EVERY
                if wd is None or now < next_ping:
                    continue
                stuck = self._stuck(wd / 2)
                failed = [s.id for s in self.streams if s.state == "failed"]
            if not stuck and not failed:
                n.notify(watchdog=1)
                stuck_said.clear()
                next_ping = now + wd / 4
            elif set(stuck + failed) - stuck_said:
                stuck_said |= set(stuck + failed)
                what = ", ".join(
                    [f"{sid} stuck for over {wd / 2:.0f} s" for sid in stuck] + [f"{sid} failed" for sid in failed]
                )
                log.error("not feeding the systemd watchdog (%s): systemd will restart edged", what)

    # ---------------------------------------------------------------- reload
    # keys a reload cannot change in a running daemon (the listener, the TPU set-up, logging)
    RESTART_KEYS = ("device", "listen", "http", "log", "edgetpu")

    def reload(self) -> bool:
        """Re-read the configuration file: restart the streams that changed, keep the rest.

        An invalid configuration (unreadable, invalid, a model that does not load, a sink that
        cannot start) is refused: the reason is logged and the running configuration kept.
        The HTTP listener and the metrics stay up throughout.
        """
        from .config import load_config

        if self.config_path is None:
            log.warning("reload: no configuration file to re-read (edged runs the embedded demo)")
            return False
        self.notifier.notify(reloading=1, monotonic_usec=int(time.monotonic() * 1e6), status="reloading")
        try:
            with self._lock:
                try:
                    new = load_config(self.config_path)
                    return self._apply(new)
                except EdgedError as exc:
                    log.error("reload refused, the running configuration is kept: %s", exc)
                    return False
        finally:
            self.notifier.notify(ready=1, status=self.status_line())

    def _apply(self, new: Config) -> bool:
        from .edgetpu import model_pair
        from .failover import build_engines

        old = self.config
        fixed = [k for k in self.RESTART_KEYS if getattr(new, k) != getattr(old, k)]
        if self._listen_from_cli and "listen" in fixed:
            fixed.remove("listen")
        if fixed:
            log.warning("reload: %s changed; that takes effect at the next restart", ", ".join(fixed))
            new = new.model_copy(update={k: getattr(old, k) for k in self.RESTART_KEYS})
        old_by = {s.id: s for s in old.streams}
        new_by = {s.id: s for s in new.streams}
        changed = {sid for sid, sc in new_by.items() if old_by.get(sid) != sc}
        removed = set(old_by) - set(new_by)
        # streams that share an engine with a changed one are rebuilt with it
        shared = {c.shared_model for c in [*(old_by[s] for s in changed | removed if s in old_by),
                                            *(new_by[s] for s in changed)] if c.shared_model}  # fmt: skip
        changed |= {sid for sid, sc in new_by.items() if sc.shared_model in shared}
        removed |= {sid for sid, sc in old_by.items() if sc.shared_model in shared and sid not in new_by}
        if not changed and not removed:
            log.info("reload: no stream changed")
            self.config = new
            return True

        def wants_tpu(sc: Any) -> bool:
            m = sc.model
            return m.accelerator == "edgetpu" or (
                m.accelerator == "auto" and model_pair(m.path, m.cpu_model)[0] is not None
            )

        running = {s.id: s for s in self.streams}
        # One worker process owns each Edge TPU: when a stream on a TPU changes, every stream
        # is rebuilt, so the workers can be closed and started again with the new set.
        tpu = any(wants_tpu(new_by[s]) for s in changed) or any(
            hasattr(running[s].engine, "worker") for s in changed | removed if s in running
        )
        if tpu:
            changed, removed = set(new_by), set(old_by)
        affected_old = [running[s] for s in (changed | removed) if s in running]
        order = [sc.id for sc in new.streams if sc.id in changed]
        sub = new.model_copy(update={"streams": [new_by[s] for s in order]})
        if tpu:  # the workers must let go of the TPUs before new ones open them
            self._stop_streams(affected_old)
            self._close_workers()
        try:
            engines, workers = build_engines(sub, self.metrics, self.tpus)
            try:
                fresh = [Stream(new_by[s], self.metrics, engines[s], self.mqtt_pool) for s in order]
            except BaseException:
                for w in workers:
                    w.close()
                raise
        except EdgedError:
            if tpu:
                self._restore(old)
            raise
        plan = [
            ("restarting", [s for s in order if s in old_by]),
            ("starting", [s for s in order if s not in old_by]),
            ("stopping", sorted(removed - changed)),
        ]
        log.info("reload: %s", "; ".join(f"{verb} {', '.join(ids)}" for verb, ids in plan if ids))
        if not tpu:
            self._stop_streams(affected_old)
        for sid in removed | changed:
            self.metrics.remove_stream(sid, keep_counters=sid in changed)
        started: list[Stream] = []
        try:
            for st in fresh:
                self._wire(st)
                st.start()
                started.append(st)
        except EdgedError:
            for st in started:
                st.close()
            for w in workers:
                w.close()
            # put back what was running
            if tpu:
                self._restore(old)
            else:
                back = [Stream(old_by[s.id], self.metrics, s.engine, self.mqtt_pool) for s in affected_old]
                for st in back:
                    self._wire(st)
                    st.start()
                keep = [s for s in self.streams if s not in affected_old]
                by_id = {s.id: s for s in keep + back}
                self.streams = [by_id[sc.id] for sc in old.streams if sc.id in by_id]
            raise
        kept = {s.id: s for s in self.streams if s not in affected_old}
        by_id = {**kept, **{s.id: s for s in fresh}}
        self.streams = [by_id[sc.id] for sc in new.streams]
        self.workers = self.workers + workers if not tpu else workers
        self.config = new
        log.info("reload: done; %d streams running", len(self.streams))
        return True

    def _stop_streams(self, streams: list[Stream]) -> None:
        for s in streams:
            s.request_stop()
        deadline = time.monotonic() + 1.0
        for s in streams:
            s.close(timeout=max(0.0, deadline - time.monotonic()))

    def _restore(self, old: Config) -> None:
        """Start the old configuration again after a refused reload that had to stop everything."""
        from .failover import build_engines

        self._stop_streams(self.streams)
        self._close_workers()
        engines, self.workers = build_engines(old, self.metrics, self.tpus)
        self.streams = [Stream(sc, self.metrics, engines[sc.id], self.mqtt_pool) for sc in old.streams]
        for s in self.streams:
            self._wire(s)
            s.start()

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
