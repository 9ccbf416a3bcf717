"""An :class:`Engine`: a model's preprocessing and decoder around one backend that invokes it.

Backends:

* :class:`InProcessBackend` — an interpreter in this process (the CPU path). Preprocessing
  writes straight into the interpreter's input tensor (no extra copy).
* :class:`WorkerBackend` — a model in an Edge TPU worker process (:mod:`edged.worker`).
  Preprocessing writes straight into the shared-memory block the worker reads.

An engine is not thread-safe: one thread uses it (the stream's inference thread); a thread
that prepares frames ahead has a :class:`~.types.Preparer` of its own.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Protocol, Union

import numpy as np

from ..errors import ConfigError
from ..labels import check_labels, read_labels
from ..model import LoadedModel, ModelInfo, load_model
from ..preprocess import Preprocessor, Transform
from .decode import decoder_for
from .types import EngineStatus, InputSignature, Output, Prepared, Preparer

if TYPE_CHECKING:
    from ..config import ModelConfig
    from ..worker import DeviceWorker


log = logging.getLogger("edged.model")


class Backend(Protocol):
    """Where a model is invoked: its input buffer, the invoke, its outputs."""

    accelerator: str
    info: ModelInfo
    runtime_version: str

    def input_view(self) -> np.ndarray:
        """A fresh [H,W,C] view of the input buffer; it must be dropped before ``invoke``."""

    def invoke(self) -> float:
        """Run the model on what the input buffer holds; returns the seconds the invoke itself took."""

    def output(self, index: int) -> np.ndarray:
        """The values of output tensor ``index`` of the last invoke."""


class InProcessBackend:
    """An interpreter in this process."""

    accelerator = "cpu"

    def __init__(self, loaded: LoadedModel) -> None:
        self.loaded = loaded
        self.info = loaded.info
        self.runtime_version = loaded.runtime.version
        self._interp = loaded.interpreter
        self._input_tensor = self._interp.tensor(self.info.input.index)

    def input_view(self) -> np.ndarray:
        return self._input_tensor()[0]

    def invoke(self) -> float:
        t0 = time.perf_counter()
        self._interp.invoke()
        return time.perf_counter() - t0

    def output(self, index: int) -> np.ndarray:
        return self._interp.get_tensor(index)


class WorkerBackend:
    """A model loaded in an Edge TPU worker process; input through shared memory."""

    accelerator = "edgetpu"

    def __init__(self, worker: DeviceWorker, key: str) -> None:
        self.worker = worker
        self.key = key
        self.info: ModelInfo = worker.models[key].info
        self.runtime_version = worker.runtime_version
        self._outputs: dict[int, np.ndarray] = {}
        self._order = [t.index for t in self.info.outputs]

    def input_view(self) -> np.ndarray:
        return self.worker.input_array(self.key)[0]

    def invoke(self) -> float:
        """Raises :class:`edged.worker.WorkerFailure` when the worker cannot answer."""
        outputs, seconds = self.worker.infer(self.key)
        self._outputs = dict(zip(self._order, outputs))
        return seconds

    def output(self, index: int) -> np.ndarray:
        return self._outputs[index]


def _tuple(v: Union[float, list[float], None]) -> Optional[tuple[float, ...]]:
    if v is None:
        return None
    return tuple(float(x) for x in v) if isinstance(v, list) else (float(v),)


class Engine:
    """One model on one backend: prepare, invoke, decode. Implements :class:`~.types.InferenceEngine`."""

    def __init__(self, cfg: ModelConfig, backend: Backend) -> None:
        self.cfg = cfg
        self.backend = backend
        self.info: ModelInfo = backend.info
        self.accelerator: str = backend.accelerator
        self.runtime_version: str = backend.runtime_version
        self.loaded: Optional[LoadedModel] = backend.loaded if isinstance(backend, InProcessBackend) else None
        self.labels = read_labels(cfg.labels) if cfg.labels else None
        if self.labels and cfg.labels and self.info.task == "classification":
            mismatch = check_labels(self.labels, int(np.prod(self.info.outputs[0].shape)), cfg.labels)
            if mismatch is not None:
                log.warning("model %s: %s", self.info.name, mismatch)
        spec = self.info.input
        q = spec.quantization
        self.signature = InputSignature(
            spec.shape, spec.dtype, q.scale, q.zero_point, cfg.resize, _tuple(cfg.mean), _tuple(cfg.std),
            cfg.interpolation,
        )  # fmt: skip
        try:
            self._preprocessor = self._new_preprocessor()
        except ValueError as exc:
            raise ConfigError(f"model {self.info.name}: {exc}") from None
        self._decode = decoder_for(self.info, cfg, self.labels)

    @classmethod
    def load(cls, cfg: ModelConfig, path: Union[str, Path, None] = None) -> Engine:
        """An engine on an interpreter in this process, for ``path`` (default: ``cfg.path``)."""
        return cls(cfg, InProcessBackend(load_model(path if path is not None else cfg.path, cfg.runtime, cfg.threads)))

    @classmethod
    def from_file(cls, path: Union[str, Path], **model: Any) -> Engine:
        """An in-process engine for a model file, with any ``ModelConfig`` keys (``labels=``, ``top_k=``...)."""
        from ..config import ModelConfig

        return cls.load(ModelConfig(path=str(path), **model))

    def _new_preprocessor(self) -> Preprocessor:
        s, c = self.signature, self.cfg
        _, h, w, ch = s.shape
        return Preprocessor(
            h, w, ch, s.dtype, s.scale, s.zero_point,
            resize=s.resize, mean=c.mean, std=c.std, interpolation=s.interpolation,
        )  # fmt: skip

    @property
    def input_size(self) -> tuple[int, int]:
        _, h, w, _ = self.info.input.shape
        return w, h

    def preparer(self) -> Preparer:
        return Preparer(self.signature, self._new_preprocessor())

    def process(self, image: np.ndarray) -> Output:
        t0 = time.perf_counter()
        view = self.backend.input_view()
        transform = self._preprocessor(image, view)
        del view
        return self._finish(transform, time.perf_counter() - t0)

    def run(self, prepared: Prepared, image: np.ndarray) -> Output:
        """The copy into the input buffer counts as preprocessing."""
        if prepared.signature != self.signature:
            return self.process(image)
        t0 = time.perf_counter()
        view = self.backend.input_view()
        np.copyto(view, prepared.data)
        del view
        return self._finish(prepared.transform, prepared.seconds + time.perf_counter() - t0)

    def status(self) -> Optional[EngineStatus]:
        return None

    def _finish(self, transform: Transform, preprocess_seconds: float) -> Output:
        t1 = time.perf_counter()
        invoke = self.backend.invoke()
        t2 = time.perf_counter()
        decoded = self._decode(self.backend.output, transform)
        t3 = time.perf_counter()
        timings = {"preprocess": preprocess_seconds, "inference": t2 - t1, "postprocess": t3 - t2}
        return Output(decoded.classes, decoded.objects, transform, timings, self.accelerator, invoke)
