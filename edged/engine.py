"""Running inference in-process on the CPU.

An :class:`Engine` owns one interpreter, one :class:`~edged.preprocess.Preprocessor`
and the model's labels; ``process(frame)`` goes from a BGR frame to the
classes/objects of the result and the time of each stage. Preprocessing writes straight
into the interpreter's input tensor (no extra copy). An engine is not thread-safe: one
thread uses it (the stream's inference thread). The Edge TPU worker is a separate issue.
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


DEFAULT_THRESHOLD = {"classification": 0.1, "detection": 0.5}


@dataclass
class Output:
    classes: list[dict[str, Any]] | None
    objects: list[dict[str, Any]] | None
    transform: Transform
    timings: dict[str, float]  # seconds: preprocess, inference, postprocess


class Engine:
    accelerator = "cpu"

    def __init__(self, model_path: str | Path, options: EngineOptions | None = None) -> None:
        self.options = opts = options or EngineOptions()
        self.loaded: LoadedModel = load_model(model_path, opts.runtime, opts.threads)
        self.info: ModelInfo = self.loaded.info
        self.labels = read_labels(opts.labels) if opts.labels else None
        self.threshold = opts.threshold if opts.threshold is not None else DEFAULT_THRESHOLD[self.info.task]
        spec = self.info.input
        _, h, w, c = spec.shape
        try:
            self.preprocessor = Preprocessor(
                h,
                w,
                c,
                spec.dtype,
                spec.quantization.scale,
                spec.quantization.zero_point,
                resize=opts.resize,
                mean=opts.mean,
                std=opts.std,
                interpolation=opts.interpolation,
            )
        except ValueError as exc:
            raise ConfigError(f"model {self.info.name}: {exc}") from None
        self._interp = self.loaded.interpreter
        self._input_tensor = self._interp.tensor(spec.index)
        self._out = {t.index: t for t in self.info.outputs}

    @property
    def input_size(self) -> tuple[int, int]:
        _, h, w, _ = self.info.input.shape
        return w, h

    def process(self, frame: np.ndarray) -> Output:
        t0 = time.perf_counter()
        view = self._input_tensor()  # fresh view into the input buffer; dropped before invoke
        transform = self.preprocessor(frame, view[0])
        del view
        t1 = time.perf_counter()
        self._interp.invoke()
        t2 = time.perf_counter()
        classes = objects = None
        if self.info.task == "classification":
            spec = self.info.outputs[0]
            q = self._interp.get_tensor(spec.index)
            classes = postprocess.classify_quantized(
                q,
                spec.quantization.scale,
                spec.quantization.zero_point,
                self.options.top_k,
                self.threshold,
                self.labels,
            )
        else:
            roles = self.info.ssd_outputs or {}
            get = self._interp.get_tensor
            w, h = self.input_size
            objects = postprocess.detect(
                get(roles["boxes"]),
                get(roles["classes"]),
                get(roles["scores"]),
                get(roles["count"]),
                transform,
                w,
                h,
                self.threshold,
                self.labels,
                top_k=self.options.top_k if self.options.top_k > 0 else None,
            )
        t3 = time.perf_counter()
        return Output(
            classes, objects, transform, {"preprocess": t1 - t0, "inference": t2 - t1, "postprocess": t3 - t2}
        )
