"""Running inference: a model's pre- and postprocessing around a backend that invokes it.

An :class:`Engine` owns one :class:`~edged.preprocess.Preprocessor`, the model's labels
and a backend; ``process(frame)`` goes from a BGR frame to the classes/objects of the
result and the time of each stage. Backends:

* :class:`InProcessBackend` — an interpreter in this process (the CPU path). Preprocessing
  writes straight into the interpreter's input tensor (no extra copy).
* :class:`WorkerBackend` — a model in an Edge TPU worker process (:mod:`edged.worker`).
  Preprocessing writes straight into the shared-memory block the worker reads.

An engine is not thread-safe: one thread uses it (the stream's inference thread).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import postprocess
from .errors import ConfigError
from .model import LoadedModel, ModelInfo, load_model, read_labels
from .preprocess import Preprocessor, Transform


@dataclass
class EngineOptions:
    runtime: str = "auto"
    threads: int | None = None
    labels: str | None = None
    top_k: int = 3
    threshold: float | None = None  # None: 0.1 for classification, 0.5 for detection
    resize: str = "stretch"
    interpolation: str = "linear"
    mean: float | list[float] | None = None
    std: float | list[float] | None = None
    # YOLO-layout detectors only (see docs/detectors.md)
    iou_threshold: float = 0.45
    max_detections: int = 300
    yolo_boxes: str = "auto"  # auto | normalized | pixels


DEFAULT_THRESHOLD = {"classification": 0.1, "detection": 0.5}


@dataclass
class Output:
    classes: list[dict[str, Any]] | None
    objects: list[dict[str, Any]] | None
    transform: Transform
    timings: dict[str, float]  # seconds: preprocess, inference, postprocess
    accelerator: str = "cpu"


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
        """A fresh view of the input tensor, [H,W,C]; it must be dropped before ``invoke``."""
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

    def __init__(self, worker: Any, key: str) -> None:
        self.worker = worker
        self.key = key
        self.loaded = None
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


class Engine:
    def __init__(
        self, model_path: str | Path | None = None, options: EngineOptions | None = None, *, backend: Any = None
    ) -> None:
        self.options = opts = options or EngineOptions()
        if backend is None:
            if model_path is None:
                raise ValueError("an Engine needs a model path or a backend")
            backend = InProcessBackend(load_model(model_path, opts.runtime, opts.threads))
        self.backend = backend
        self.loaded: LoadedModel | None = backend.loaded
        self.info: ModelInfo = backend.info
        self.accelerator: str = backend.accelerator
        self.runtime_version: str = backend.runtime_version
        self.labels = read_labels(opts.labels) if opts.labels else None
        self.threshold = opts.threshold if opts.threshold is not None else DEFAULT_THRESHOLD[self.info.task]
        spec = self.info.input
        _, h, w, c = spec.shape
        try:
            self.preprocessor = Preprocessor(
                h, w, c, spec.dtype, spec.quantization.scale, spec.quantization.zero_point,
                resize=opts.resize, mean=opts.mean, std=opts.std, interpolation=opts.interpolation,
            )  # fmt: skip
        except ValueError as exc:
            raise ConfigError(f"model {self.info.name}: {exc}") from None

    @property
    def input_size(self) -> tuple[int, int]:
        _, h, w, _ = self.info.input.shape
        return w, h

    def make_preprocessor(self) -> Preprocessor:
        """A preprocessor of its own for a thread that prepares frames ahead (see ``run_prepared``)."""
        spec, o = self.info.input, self.options
        _, h, w, c = spec.shape
        return Preprocessor(
            h, w, c, spec.dtype, spec.quantization.scale, spec.quantization.zero_point,
            resize=o.resize, mean=o.mean, std=o.std, interpolation=o.interpolation,
        )  # fmt: skip

    @property
    def input_key(self) -> tuple[Any, ...]:
        """What a prepared input depends on: it fits every engine with the same key."""
        spec, o = self.info.input, self.options
        q = spec.quantization
        return (spec.shape, spec.dtype, q.scale, q.zero_point, o.resize, str(o.mean), str(o.std), o.interpolation)

    def process(self, frame: np.ndarray) -> Output:
        """Preprocess ``frame`` straight into the input buffer, invoke, postprocess."""
        t0 = time.perf_counter()
        view = self.backend.input_view()
        transform = self.preprocessor(frame, view)
        del view
        return self._finish(transform, time.perf_counter() - t0)

    def run_prepared(
        self, data: np.ndarray, transform: Transform, preprocess_seconds: float, key: Any = None, frame: Any = None
    ) -> Output:
        """Invoke on an input another thread already preprocessed (``make_preprocessor``);
        the copy into the input buffer counts as preprocessing. An input prepared for
        another ``input_key`` is prepared again from ``frame``."""
        if key is not None and key != self.input_key and frame is not None:
            return self.process(frame)
        t0 = time.perf_counter()
        view = self.backend.input_view()
        np.copyto(view, data)
        del view
        return self._finish(transform, preprocess_seconds + time.perf_counter() - t0)

    def _finish(self, transform: Transform, preprocess_seconds: float) -> Output:
        t1 = time.perf_counter()
        self.backend.invoke()
        t2 = time.perf_counter()
        output = self.backend.output
        classes = objects = None
        if self.info.task == "classification":
            spec = self.info.outputs[0]
            classes = postprocess.classify_quantized(
                output(spec.index), spec.quantization.scale, spec.quantization.zero_point,
                self.options.top_k, self.threshold, self.labels,
            )  # fmt: skip
        elif self.info.yolo_output is not None:
            yolo, o = self.info.yolo_output, self.options
            spec = next(t for t in self.info.outputs if t.index == yolo.index)
            w, h = self.input_size
            objects = postprocess.detect_yolo(
                output(yolo.index), transform, w, h, channels_first=yolo.channels_first,
                scale=spec.quantization.scale, zero_point=spec.quantization.zero_point,
                threshold=self.threshold, iou_threshold=o.iou_threshold, max_detections=o.max_detections,
                box_format=o.yolo_boxes, labels=self.labels, top_k=o.top_k if o.top_k > 0 else None,
            )  # fmt: skip
        else:
            roles = self.info.ssd_outputs or {}
            w, h = self.input_size
            objects = postprocess.detect(
                output(roles["boxes"]), output(roles["classes"]), output(roles["scores"]), output(roles["count"]),
                transform, w, h, self.threshold, self.labels,
                top_k=self.options.top_k if self.options.top_k > 0 else None,
            )  # fmt: skip
        t3 = time.perf_counter()
        return Output(
            classes, objects, transform,
            {"preprocess": preprocess_seconds, "inference": t2 - t1, "postprocess": t3 - t2}, self.accelerator,
        )  # fmt: skip
