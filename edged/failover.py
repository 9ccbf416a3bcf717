"""Edge TPU with CPU fallback, per stream.

A :class:`FailoverEngine` holds the stream's Edge TPU engine (a model in a
:class:`~edged.worker.DeviceWorker`) and its CPU twin (an in-process engine, loaded at
start so that a fallback costs nothing). When the worker fails, the frame in hand is run
on the CPU twin at once and the stream stays there; the worker's probe thread restarts it
with capped exponential backoff, and the stream moves back on its next frame once the
worker's generation has changed. Every switch is logged once, with its reason.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from .engine import Engine, EngineOptions, Output, WorkerBackend
from .errors import AcceleratorError
from .worker import DeviceWorker, WorkerFailure

log = logging.getLogger(__name__)


class FailoverEngine:
    def __init__(
        self,
        stream: str,
        options: EngineOptions,
        worker: DeviceWorker | None,
        cpu_path: str | Path | None,
        metrics: Any = None,
        start_reason: str | None = None,
    ) -> None:
        self.stream = stream
        self.options = options
        self.worker = worker
        self.metrics = metrics
        self.cpu: Engine | None = Engine(cpu_path, options) if cpu_path is not None else None
        self.cpu_path = Path(cpu_path) if cpu_path is not None else None
        self.tpu: Engine | None = None
        self._tpu_generation = 0
        self.since: float = time.monotonic()
        self.last_reason: str | None = start_reason
        if worker is not None and worker.up:
            self._attach_tpu()
        elif self.cpu is None:
            raise AcceleratorError(
                f"stream {stream}: the Edge TPU is not available ({start_reason or 'worker down'}) and the "
                "model has no CPU twin to fall back to; put the uncompiled model beside it or set cpu_model"
            )
        else:
            log.warning(
                "stream %s: Edge TPU unavailable (%s); running on the CPU twin %s",
                stream, start_reason or "worker down", self.cpu.info.name,
            )  # fmt: skip
            self._count_fallback("unavailable")
        self._set_active()

    # ---------------------------------------------------------------- what the stream sees
    @property
    def on_tpu(self) -> bool:
        return self.tpu is not None

    @property
    def current(self) -> Engine:
        engine = self.tpu or self.cpu
        assert engine is not None
        return engine

    @property
    def accelerator(self) -> str:
        return "edgetpu" if self.on_tpu else "cpu"

    @property
    def info(self) -> Any:
        return self.current.info

    @property
    def runtime_version(self) -> str:
        return self.current.runtime_version

    @property
    def loaded(self) -> Any:
        return self.current.loaded

    def make_preprocessor(self) -> Any:
        return self.current.make_preprocessor()

    @property
    def input_key(self) -> tuple[Any, ...]:
        return self.current.input_key

    def process(self, frame: np.ndarray) -> Output:
        return self._run(lambda engine: engine.process(frame))

    def run_prepared(
        self, data: np.ndarray, transform: Any, preprocess_seconds: float, key: Any = None, frame: Any = None
    ) -> Output:
        """As :meth:`Engine.run_prepared`; an input prepared for the other engine (the TPU and
        CPU models quantise their input differently) is prepared again from ``frame``."""

        def run(engine: Engine) -> Output:
            if key is not None and key != engine.input_key and frame is not None:
                return engine.process(frame)
            return engine.run_prepared(data, transform, preprocess_seconds)

        return self._run(run)

    def _run(self, fn: Any) -> Output:
        w = self.worker
        if self.tpu is None and w is not None and w.up and w.generation != self._tpu_generation:
            self._attach_tpu()
            log.info(
                "stream %s: back on the Edge TPU %s after %.0f s on the CPU",
                self.stream, w.label, time.monotonic() - self.since,
            )  # fmt: skip
            self.since = time.monotonic()
            self._set_active()
        if self.tpu is not None:
            try:
                return fn(self.tpu)
            except WorkerFailure as exc:
                self._fall_back(exc)
        if self.cpu is None:
            raise AcceleratorError(f"Edge TPU down ({self.last_reason}) and no CPU twin to run on")
        return fn(self.cpu)  # the frame in hand is not lost

    # ---------------------------------------------------------------- switching
    def _attach_tpu(self) -> None:
        assert self.worker is not None
        self.tpu = Engine(options=self.options, backend=WorkerBackend(self.worker, self.stream))
        self._tpu_generation = self.worker.generation

    def _fall_back(self, exc: WorkerFailure) -> None:
        self.tpu = None
        self.last_reason = exc.reason
        self.since = time.monotonic()
        self._count_fallback(exc.kind)
        assert self.worker is not None
        if self.cpu is not None:
            log.warning(
                "stream %s: Edge TPU %s failed (%s); moved to the CPU twin %s; probing the TPU again in %g s",
                self.stream, self.worker.label, exc.reason, self.cpu.info.name, self.worker.next_probe_in,
            )  # fmt: skip
        else:
            log.error(
                "stream %s: Edge TPU %s failed (%s) and there is no CPU twin; waiting for the TPU",
                self.stream, self.worker.label, exc.reason,
            )  # fmt: skip
        self._set_active()

    def _count_fallback(self, kind: str) -> None:
        if self.metrics is not None:
            self.metrics.fallbacks.labels(self.stream, kind).inc()

    def _set_active(self) -> None:
        if self.metrics is None:
            return
        for acc in ("edgetpu", "cpu"):
            self.metrics.accelerator_active.labels(self.stream, acc).set(1 if acc == self.accelerator else 0)

    def status(self) -> dict[str, Any]:
        return {
            "accelerator": self.accelerator,
            "device": self.worker.label if self.worker else None,
            "since_seconds": round(time.monotonic() - self.since, 1),
            "last_fallback_reason": self.last_reason,
            "cpu_model": self.cpu.info.name if self.cpu else None,
        }


def build_engines(
    config: Any, metrics: Any, tpus: list[Any] | None = None
) -> tuple[dict[str, Any], list[DeviceWorker]]:
    """Decide where each stream's model runs; start the Edge TPU workers; return the engines.

    * ``accelerator: cpu``, or ``auto`` with a model that is not compiled for the Edge TPU
      (and no ``_edgetpu`` twin beside it): an in-process CPU :class:`Engine`.
    * otherwise a :class:`FailoverEngine` on the worker of the stream's device (``device:``,
      or spread round-robin over the TPUs found; one worker per device) with the CPU twin.
    * ``accelerator: edgetpu`` and the delegate does not load: :class:`AcceleratorError`.
    """
    from .edgetpu import default_library, list_edge_tpus, model_pair
    from .pipeline import engine_options

    if tpus is None:
        tpus = list_edge_tpus()
    tcfg = config.edgetpu
    library = tcfg.library or default_library()
    workers: dict[str, DeviceWorker] = {}
    plans: list[tuple[Any, DeviceWorker | None, Path | None]] = []
    spread = 0
    first_of: dict[str, str] = {}  # shared model name -> the stream that builds its engine
    for s in config.streams:
        m = s.model
        if s.shared_model:
            if s.shared_model in first_of:
                plans.append((s, None, None))
                continue
            first_of[s.shared_model] = s.id
        tpu_model, cpu_model = model_pair(m.path, m.cpu_model)
        if m.accelerator == "cpu" or (m.accelerator == "auto" and tpu_model is None):
            plans.append((s, None, None))
            continue
        selector = m.device
        if selector is None and tpus:
            selector = tpus[spread % len(tpus)].selector
            spread += 1
        label = selector or "default"
        worker = workers.get(label)
        if worker is None:
            worker = workers[label] = DeviceWorker(
                label, selector, library, dict(tcfg.options), delegate_runtime(tcfg.runtime),
                tcfg.deadline_seconds, tcfg.probe_initial_seconds, tcfg.probe_max_seconds, metrics,
            )  # fmt: skip
        worker.register(s.id, str(tpu_model or m.path), m.threads)
        plans.append((s, worker, cpu_model))
    reasons: dict[str, str] = {}
    for label, worker in workers.items():
        try:
            worker.start()
        except WorkerFailure as exc:
            reasons[label] = exc.reason
    engines: dict[str, Any] = {}
    shared: dict[str, SharedEngine] = {}
    try:
        for s, worker, cpu_model in plans:
            if s.shared_model and first_of[s.shared_model] != s.id:
                continue  # built once, by the first stream that names it
            opts = engine_options(s.model)
            if worker is None:
                engines[s.id] = Engine(s.model.path if s.model.accelerator != "cpu" else _cpu_path(s.model), opts)
                continue
            reason = reasons.get(worker.label)
            if reason is not None and s.model.accelerator == "edgetpu":
                raise AcceleratorError(
                    f"stream {s.id}: accelerator is edgetpu but the Edge TPU delegate did not load ({reason})"
                )
            engines[s.id] = FailoverEngine(s.id, opts, worker, cpu_model, metrics, start_reason=reason)
            first = worker.models[s.id].first_inference_seconds
            if first is not None and metrics is not None:
                metrics.first_inference.labels(s.id, worker.label).set(first)
        for s, _, _ in plans:  # wrap the engines that several streams use, so they take turns
            if s.shared_model:
                if s.shared_model not in shared:
                    shared[s.shared_model] = SharedEngine(engines[first_of[s.shared_model]])
                engines[s.id] = shared[s.shared_model]
    except BaseException:
        for worker in workers.values():
            worker.close()
        raise
    return engines, list(workers.values())


def _cpu_path(model_cfg: Any) -> str:
    """``accelerator: cpu``: the CPU twin of an Edge TPU model, or the model itself."""
    from .edgetpu import model_pair

    _, cpu = model_pair(model_cfg.path, model_cfg.cpu_model)
    return str(cpu or model_cfg.path)


def delegate_runtime(name: str) -> str:
    """The interpreter package for the delegate: libedgetpu is built against tflite_runtime."""
    import os

    from .runtime import available

    if name != "auto" or os.environ.get("EDGED_RUNTIME"):
        return name
    found = available()
    return "tflite_runtime" if "tflite_runtime" in found else "auto"


class FairLock:
    """A lock granted in arrival order (a ticket lock), so no stream starves another."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._next = 0
        self._serving = 0

    def __enter__(self) -> FairLock:
        with self._cv:
            ticket = self._next
            self._next += 1
            while self._serving != ticket:
                self._cv.wait()
        return self

    def __exit__(self, *exc: object) -> None:
        with self._cv:
            self._serving += 1
            self._cv.notify_all()


class SharedEngine:
    """One engine (one interpreter, or one model on a TPU) used by several streams in turn."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self._turns = FairLock()

    def process(self, frame: np.ndarray) -> Output:
        with self._turns:
            return self.engine.process(frame)

    def run_prepared(self, *args: Any, **kwargs: Any) -> Output:
        with self._turns:
            return self.engine.run_prepared(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)
