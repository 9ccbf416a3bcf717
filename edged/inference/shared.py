"""One engine used by several streams in turn (streams that name the same entry of ``models:``)."""

from __future__ import annotations

import threading
from typing import Optional

import numpy as np

from ..model import ModelInfo
from .types import EngineStatus, InferenceEngine, Output, PendingOutput, Prepared, Preparer


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
    """Several streams' turns on one engine (one interpreter, or one model on a TPU).
    Implements :class:`~.types.InferenceEngine`; each stream keeps its own preparer."""

    def __init__(self, engine: InferenceEngine) -> None:
        self.engine = engine
        self._turns = FairLock()

    @property
    def info(self) -> ModelInfo:
        return self.engine.info

    @property
    def accelerator(self) -> str:
        return self.engine.accelerator

    @property
    def runtime_version(self) -> str:
        return self.engine.runtime_version

    def preparer(self) -> Preparer:
        return self.engine.preparer()

    def submit(self, prepared: Optional[Prepared], image: np.ndarray) -> PendingOutput:
        """Turns are taken to start an inference, not for its whole round trip: the streams'
        requests interleave in the worker, and each decodes its own result."""
        with self._turns:
            return self.engine.submit(prepared, image)

    def process(self, image: np.ndarray) -> Output:
        return self.submit(None, image).result()

    def run(self, prepared: Prepared, image: np.ndarray) -> Output:
        return self.submit(prepared, image).result()

    def status(self) -> Optional[EngineStatus]:
        return self.engine.status()
