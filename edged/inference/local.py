"""An :class:`Engine`: a model's preprocessing and decoder around one backend that invokes it.

Backends:

* :class:`InProcessBackend` — an interpreter in this process (the CPU path). Preprocessing
  writes straight into the interpreter's input tensor (no extra copy).
* :class:`WorkerBackend` — a model in an Edge TPU worker process (:mod:`edged.worker`).
  Preprocessing writes straight into the shared-memory block the worker reads.

``Engine.submit`` starts an inference and returns a :class:`Pending` whose ``result()``
waits for it and decodes it, so a stream decodes and publishes one frame while the next is
being invoked. ``submit`` is thread-safe (the CPU twin of a failed-over stream is used by
both of the stream's inference threads); a thread that prepares frames ahead has a
:class:`~.types.Preparer` of its own.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Protocol, Union

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


class Call(Protocol):
    """One invoke started on a backend."""

    answered: float  # time.perf_counter() when its outputs were there (set once ``wait`` returns)

    def wait(self) -> tuple[dict[int, np.ndarray], float]:
        """The outputs by tensor index (valid until ``release``) and the seconds the invoke itself took."""

    def release(self) -> None:
        """The call's buffers may be reused (once, after its outputs are read)."""


class Backend(Protocol):
    """Where a model is invoked: ``start`` fills its input and starts an invoke."""

    accelerator: str
    info: ModelInfo
    runtime_version: str

    def start(self, fill: Callable[[np.ndarray], object]) -> Call:
        """``fill`` writes the input into the [H,W,C] buffer it is given (and drops it), then the
        invoke starts; the in-process backend runs it before returning, the worker does not wait."""


class _Done:
    """An invoke that ran to its end in this thread; its outputs are copies."""

    def __init__(self, outputs: dict[int, np.ndarray], seconds: float) -> None:
        self.outputs, self.seconds = outputs, seconds
        self.answered = time.perf_counter()

    def wait(self) -> tuple[dict[int, np.ndarray], float]:
        return self.outputs, self.seconds

    def release(self) -> None:
        pass


class InProcessBackend:
    """An interpreter in this process."""

    accelerator = "cpu"

    def __init__(self, loaded: LoadedModel) -> None:
        self.loaded = loaded
        self.info = loaded.info
        self.runtime_version = loaded.runtime.version
        self._interp = loaded.interpreter
        self._input_tensor = self._interp.tensor(self.info.input.index)
        self._order = [t.index for t in self.info.outputs]

    def start(self, fill: Callable[[np.ndarray], object]) -> Call:
        fill(self._input_tensor()[0])
        t0 = time.perf_counter()
        self._interp.invoke()
        seconds = time.perf_counter() - t0
        # copies: the next invoke overwrites the tensors while this one is still being decoded
        return _Done({i: self._interp.get_tensor(i) for i in self._order}, seconds)


class WorkerBackend:
    """A model loaded in an Edge TPU worker process; input and outputs through its shared-memory
    slots, several inferences in flight (:mod:`edged.worker`)."""

    accelerator = "edgetpu"

    def __init__(self, worker: DeviceWorker, key: str) -> None:
        self.worker = worker
        self.key = key
        self.info: ModelInfo = worker.models[key].info
        self.runtime_version = worker.runtime_version

    def start(self, fill: Callable[[np.ndarray], object]) -> Call:
        """Raises :class:`edged.worker.WorkerFailure` when the worker is down; its ``wait`` does
        when the worker cannot answer."""
        return self.worker.submit(self.key, fill)


class Pending:
    """An inference started by :meth:`Engine.submit`; :meth:`result` waits for it and decodes it."""

    def __init__(self, engine: Engine, call: Call, transform: Transform, preprocess: float, filled: float) -> None:
        self._engine, self._call, self._transform = engine, call, transform
        self._preprocess, self._filled = preprocess, filled

    def result(self) -> Output:
        """The decoded output; raises what the backend raises (a worker failure) and frees the call's buffers."""
        call = self._call
        try:
            outputs, invoke = call.wait()
            t2 = time.perf_counter()
            decoded = self._engine._decode(outputs.__getitem__, self._transform)
        finally:
            call.release()
        t3 = time.perf_counter()
        timings = {
            "preprocess": self._preprocess,
            "inference": max(0.0, call.answered - self._filled),
            "postprocess": t3 - t2,
        }
        e = self._engine
        return Output(decoded.classes, decoded.objects, self._transform, timings, e.accelerator, invoke)


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
        self._lock = threading.Lock()  # submit: the preprocessor and the backend's input, one thread at a time

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

    def submit(self, prepared: Optional[Prepared], image: np.ndarray) -> Pending:
        """Fill the input (a copy of ``prepared``; ``image`` prepared again when ``prepared`` is
        None or of another signature) and start the invoke; thread-safe. The copy into the input
        buffer counts as preprocessing."""
        with self._lock:
            t0 = time.perf_counter()
            box: list[Any] = []
            if prepared is not None and prepared.signature == self.signature:
                transform, before = prepared.transform, prepared.seconds

                def fill(view: np.ndarray) -> None:
                    np.copyto(view, prepared.data)
                    box.append(time.perf_counter())
            else:
                transform, before = None, 0.0

                def fill(view: np.ndarray) -> None:
                    box.append(self._preprocessor(image, view))
                    box.append(time.perf_counter())

            call = self.backend.start(fill)
            filled = box[-1]
            return Pending(self, call, transform or box[0], before + filled - t0, filled)

    def run(self, prepared: Prepared, image: np.ndarray) -> Output:
        return self.submit(prepared, image).result()

    def process(self, image: np.ndarray) -> Output:
        return self.submit(None, image).result()

    def status(self) -> Optional[EngineStatus]:
        return None
