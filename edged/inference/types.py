"""What a stream needs of an engine, declared: :class:`InferenceEngine` and its values."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Optional, Protocol

import numpy as np

from ..model import ModelInfo
from ..preprocess import Preprocessor, Transform
from ..result import Class, Object


@dataclass(frozen=True)
class InputSignature:
    """What a prepared input depends on: an input prepared for one signature fits every engine
    with the same one (the Edge TPU model and its CPU twin may quantise their input differently)."""

    shape: tuple[int, ...]
    dtype: str
    scale: float
    zero_point: int
    resize: str
    mean: Optional[tuple[float, ...]]
    std: Optional[tuple[float, ...]]
    interpolation: str


@dataclass(frozen=True)
class Prepared:
    """A frame preprocessed into a model input, with the signature it was prepared for."""

    data: np.ndarray  # [H, W, C] in the model's input dtype
    transform: Transform  # maps input pixels back to the frame
    signature: InputSignature
    seconds: float  # time spent preparing it


class Preparer:
    """Prepares frames for one input signature; used by the one thread that owns it."""

    def __init__(self, signature: InputSignature, preprocessor: Preprocessor) -> None:
        self.signature = signature
        self._preprocessor = preprocessor

    def prepare(self, image: np.ndarray, out: np.ndarray) -> Prepared:
        """Preprocess ``image`` (BGR uint8) into ``out``; raises ValueError on a frame of the wrong kind."""
        t0 = time.perf_counter()
        transform = self._preprocessor(image, out)
        return Prepared(out, transform, self.signature, time.perf_counter() - t0)


@dataclass
class Output:
    """One inference: what the model found and the time of each stage."""

    classes: Optional[list[Class]]
    objects: Optional[list[Object]]
    transform: Transform
    timings: dict[str, float]  # seconds: preprocess, inference, postprocess
    accelerator: str = "cpu"
    invoke_seconds: float = 0.0  # the invoke alone, as its backend measured it (in the Edge TPU worker: the child)


@dataclass(frozen=True)
class EngineStatus:
    """Where an Edge TPU stream runs now and why (the ``edgetpu`` section of a stream's status)."""

    accelerator: str
    device: Optional[str]
    since_seconds: float
    last_fallback_reason: Optional[str]
    cpu_model: Optional[str]
    flaps: int = 0  # the device's failures soon after a restart (edgetpu.stable_seconds)
    next_probe_seconds: Optional[float] = None  # while its worker is down: when it is probed again
    fallbacks: int = 0  # switches to the CPU twin since start

    def to_dict(self) -> dict[str, Any]:
        return {
            "accelerator": self.accelerator,
            "device": self.device,
            "since_seconds": self.since_seconds,
            "last_fallback_reason": self.last_fallback_reason,
            "cpu_model": self.cpu_model,
            "flaps": self.flaps,
            "next_probe_seconds": self.next_probe_seconds,
            "fallbacks": self.fallbacks,
        }


class PendingOutput(Protocol):
    """An inference started by ``submit``: the invoke may still be running."""

    def result(self) -> Output:
        """Wait for it and decode it (once)."""


class InferenceEngine(Protocol):
    """What a stream needs of an engine; :class:`~.local.Engine`, :class:`~.failover.FailoverEngine`
    and :class:`~.shared.SharedEngine` implement it."""

    @property
    def info(self) -> ModelInfo:
        """The model it runs now."""

    @property
    def accelerator(self) -> str:
        """Where it runs now: ``cpu`` or ``edgetpu``."""

    @property
    def runtime_version(self) -> str:
        """The interpreter package's version."""

    def preparer(self) -> Preparer:
        """A preparer of its own, for a thread that prepares frames ahead of ``run``."""

    def submit(self, prepared: Optional[Prepared], image: np.ndarray) -> PendingOutput:
        """Start an inference on ``prepared`` (None, or one prepared for another signature: ``image``
        is prepared again) and return without waiting for it where the backend allows (the Edge TPU
        worker), so the stream decodes and publishes the previous frame meanwhile. ``prepared`` must
        stay untouched until the result is taken (a failed-over frame is run again from it)."""

    def run(self, prepared: Prepared, image: np.ndarray) -> Output:
        """``submit(prepared, image).result()``."""

    def process(self, image: np.ndarray) -> Output:
        """Prepare ``image`` straight into the input and invoke (one-shot use: ``edged infer``)."""

    def status(self) -> Optional[EngineStatus]:
        """Where an Edge TPU stream runs now and why; None for an engine that only ever uses the CPU."""
