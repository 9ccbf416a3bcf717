"""Edge TPU with CPU fallback, per stream.

A :class:`FailoverEngine` holds the stream's Edge TPU engine (a model in a
:class:`~edged.worker.DeviceWorker`) and its CPU twin (an in-process engine, loaded at
start so that a fallback costs nothing). When the worker fails, the frame in hand is run
on the CPU twin at once and the stream stays there; the worker's probe thread restarts it
with capped exponential backoff, and the stream moves back on its next frame once the
worker's generation has changed. Every switch is logged once, with its reason.

Inferences are submitted to the worker without waiting (several are in flight); when the
worker fails, every one in flight is run on the CPU twin as its result is taken, in the
order they were submitted, so none of their frames is lost.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Union

import numpy as np

from ..errors import AcceleratorError, WorkerFailure
from ..model import ModelInfo
from .local import Engine, WorkerBackend
from .types import EngineStatus, Output, PendingOutput, Prepared, Preparer

if TYPE_CHECKING:
    from ..config import ModelConfig
    from ..metrics import Metrics
    from ..worker import DeviceWorker

log = logging.getLogger("edged.failover")


class FailoverEngine:
    """The Edge TPU engine of one stream and its CPU twin. Implements :class:`~.types.InferenceEngine`."""

    def __init__(
        self,
        stream: str,
        cfg: ModelConfig,
        worker: DeviceWorker,
        cpu_path: Union[str, Path, None],
        metrics: Optional[Metrics] = None,
        start_reason: Optional[str] = None,
    ) -> None:
        self.stream = stream
        self.cfg = cfg
        self.worker = worker
        self.metrics = metrics
        self.cpu: Optional[Engine] = Engine.load(cfg, cpu_path) if cpu_path is not None else None
        self.tpu: Optional[Engine] = None
        self._tpu_generation = 0
        self.since: float = time.monotonic()
        self._switch = threading.Lock()  # tpu, its generation, the switch bookkeeping
        self.last_reason: Optional[str] = start_reason
        self.fallbacks = 0  # switches to the CPU twin since start
        if worker.up:
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
                extra={"stream": stream, "tpu": worker.label, "accelerator": "cpu"},
            )  # fmt: skip
            self._count_fallback("unavailable")
        self._set_active()

    # ---------------------------------------------------------------- what the stream sees
    @property
    def current(self) -> Engine:
        engine = self.tpu or self.cpu
        assert engine is not None
        return engine

    @property
    def accelerator(self) -> str:
        return "edgetpu" if self.tpu is not None else "cpu"

    @property
    def info(self) -> ModelInfo:
        return self.current.info

    @property
    def runtime_version(self) -> str:
        return self.current.runtime_version

    def preparer(self) -> Preparer:
        return self.current.preparer()

    def submit(self, prepared: Optional[Prepared], image: np.ndarray) -> PendingOutput:
        """An input prepared for the other engine (the TPU and CPU models may quantise their
        input differently) is prepared again from ``image`` by the engine that runs it."""
        tpu = self._tpu_now()
        if tpu is not None:
            try:
                return _OnTpu(self, tpu, tpu.submit(prepared, image), prepared, image)
            except WorkerFailure as exc:
                self._fall_back(tpu, exc)
        return self._cpu_or_raise().submit(prepared, image)  # the frame in hand is not lost

    def run(self, prepared: Prepared, image: np.ndarray) -> Output:
        return self.submit(prepared, image).result()

    def process(self, image: np.ndarray) -> Output:
        return self.submit(None, image).result()

    def status(self) -> EngineStatus:
        return EngineStatus(
            accelerator=self.accelerator,
            device=self.worker.label,
            since_seconds=round(time.monotonic() - self.since, 1),
            last_fallback_reason=self.last_reason,
            cpu_model=self.cpu.info.name if self.cpu else None,
            flaps=self.worker.flaps,
            next_probe_seconds=self.worker.next_probe_seconds(),
            fallbacks=self.fallbacks,
        )

    def _tpu_now(self) -> Optional[Engine]:
        """The TPU engine, attached again first when the worker came back since the stream left it."""
        w = self.worker
        with self._switch:
            if self.tpu is None and w.up and w.generation != self._tpu_generation:
                self._attach_tpu()
                log.info(
                    "stream %s: back on the Edge TPU %s after %.0f s on the CPU",
                    self.stream, w.label, time.monotonic() - self.since,
                    extra={"stream": self.stream, "tpu": w.label, "accelerator": "edgetpu"},
                )  # fmt: skip
                self.since = time.monotonic()
                self._set_active()
            return self.tpu

    def _cpu_or_raise(self) -> Engine:
        if self.cpu is None:
            raise AcceleratorError(f"Edge TPU down ({self.last_reason}) and no CPU twin to run on")
        return self.cpu

    # ---------------------------------------------------------------- switching
    def _attach_tpu(self) -> None:
        self.tpu = Engine(self.cfg, WorkerBackend(self.worker, self.stream))
        self._tpu_generation = self.worker.generation

    def _fall_back(self, tpu: Engine, exc: WorkerFailure) -> None:
        """``tpu`` failed: leave it, once (the other inferences in flight on it fail too)."""
        with self._switch:
            if self.tpu is not tpu:
                return
            self._leave_tpu(exc)

    def _leave_tpu(self, exc: WorkerFailure) -> None:
        self.tpu = None
        self.last_reason = exc.reason
        self.since = time.monotonic()
        self._count_fallback(exc.kind)
        if self.cpu is not None:
            log.warning(
                "stream %s: Edge TPU %s failed (%s); moved to the CPU twin %s; probing the TPU again in %g s",
                self.stream, self.worker.label, exc.reason, self.cpu.info.name, self.worker.next_probe_in,
                extra={"stream": self.stream, "tpu": self.worker.label, "accelerator": "cpu"},
            )  # fmt: skip
        else:
            log.error(
                "stream %s: Edge TPU %s failed (%s) and there is no CPU twin; waiting for the TPU",
                self.stream, self.worker.label, exc.reason, extra={"stream": self.stream, "tpu": self.worker.label},
            )  # fmt: skip
        self._set_active()

    def _count_fallback(self, kind: str) -> None:
        self.fallbacks += 1
        if self.metrics is not None:
            self.metrics.fallbacks.labels(self.stream, kind).inc()

    def _set_active(self) -> None:
        if self.metrics is None:
            return
        for acc in ("edgetpu", "cpu"):
            self.metrics.accelerator_active.labels(self.stream, acc).set(1 if acc == self.accelerator else 0)


class _OnTpu:
    """An inference in flight on the Edge TPU; run on the CPU twin instead if the worker fails."""

    def __init__(self, engine: FailoverEngine, tpu: Engine, pending: PendingOutput, prepared: Optional[Prepared],
                 image: np.ndarray) -> None:  # fmt: skip
        self._engine, self._tpu, self._pending = engine, tpu, pending
        self._prepared, self._image = prepared, image

    def result(self) -> Output:
        try:
            return self._pending.result()
        except WorkerFailure as exc:
            self._engine._fall_back(self._tpu, exc)
        cpu = self._engine._cpu_or_raise()
        return cpu.submit(self._prepared, self._image).result()
