"""``edged eval``: top-1 / top-5 accuracy of classification models on a labelled image folder.

The folder holds one subfolder per class (``DATA/cat/*.jpg``, ``DATA/dog/*.jpg``). Which
output index a class is:

* with ``--labels FILE`` (the model's labels file, either format edged reads): the folder
  whose name equals a label (exactly, else ignoring case) is that label's id; a folder that
  names no label is an error;
* without it: the folders in sorted name order are ids 0, 1, 2, ... (so name them
  ``0``..``9`` or ``00_background``, ``01_cat``, ...; ``10`` sorts before ``2``).

Every image goes through edged's own preprocessing (the :class:`~edged.inference.Engine`'s
:class:`~edged.preprocess.Preprocessor`, with the model config's resize / interpolation /
mean / std), so the accuracy is the daemon's. Images are run in batches where the model
allows it (the interpreter's input resized to [B,H,W,C]); models that cannot be resized
(a reshape to a fixed batch of 1, say) run one image at a time. The latency is the
interpreter's invoke time divided by the batch size (preprocessing excluded), after one untimed invoke.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import ModelConfig
from ..errors import ConfigError
from ..inference import Engine
from ..labels import read_labels
from ..preprocess import dequantize
from ..sources.images import list_images, read_image
from .common import format_table, human_size, parse_floats


@dataclass
class Dataset:
    root: Path
    classes: list[str]  # folder names, sorted
    files: list[Path]
    folder_index: np.ndarray  # index into classes, per file


def load_dataset(root: str | Path) -> Dataset:
    d = Path(root)
    if not d.is_dir():
        raise ConfigError(f"image folder not found: {d}" if not d.exists() else f"not a folder: {d}")
    classes = sorted(p.name for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ConfigError(f"{d} has no class folders; put each class's images in a folder named after it")
    files: list[Path] = []
    index: list[int] = []
    for i, name in enumerate(classes):
        imgs = list_images(d / name)
        files += imgs
        index += [i] * len(imgs)
    if not files:
        raise ConfigError(f"no images in the class folders of {d}")
    return Dataset(d, classes, files, np.asarray(index, dtype=np.int64))


def class_ids(classes: list[str], labels: dict[int, str] | None) -> np.ndarray:
    """The model output index of each class folder (see the module's docstring)."""
    if labels is None:
        return np.arange(len(classes), dtype=np.int64)
    exact = {v: k for k, v in labels.items()}
    folded = {v.casefold(): k for k, v in labels.items()}
    ids, missing = [], []
    for name in classes:
        k = exact.get(name, folded.get(name.casefold()))
        if k is None:
            missing.append(name)
        ids.append(-1 if k is None else k)
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ConfigError(f"class folders not in the labels file: {shown}; name each folder after its label")
    return np.asarray(ids, dtype=np.int64)


def _set_batch(interp: Any, index: int, shape: tuple[int, ...], n: int) -> None:
    interp.resize_tensor_input(index, [n, *shape[1:]], strict=False)
    interp.allocate_tensors()


def _dynamic_batch(interp: Any, index: int) -> bool:
    """True when the model declares its batch dimension dynamic (shape signature -1).

    Only such models are resized: tflite-runtime 2.14 crashes (SIGSEGV in allocate_tensors)
    on resizing a model whose graph fixes the batch at 1, instead of raising an error.
    """
    for d in interp.get_input_details():
        if d["index"] == index:
            sig = d.get("shape_signature")
            return sig is not None and len(sig) > 0 and int(sig[0]) == -1
    return False


def run_model(engine: Engine, inputs: np.ndarray, batch: int) -> tuple[np.ndarray, float, int]:
    """Scores [N, K] (dequantised), total invoke seconds, and the batch size used."""
    loaded = engine.loaded
    assert loaded is not None
    interp = loaded.interpreter
    spec, out = engine.info.input, engine.info.outputs[0]
    n = len(inputs)
    k = int(np.prod(out.shape))
    b = max(1, min(batch, n)) if _dynamic_batch(interp, spec.index) else 1
    if b > 1:
        try:
            _set_batch(interp, spec.index, spec.shape, b)
            interp.set_tensor(spec.index, inputs[:b])
            interp.invoke()
            if interp.get_tensor(out.index).reshape(-1).size != b * k:
                raise ValueError("output does not follow the batch")
        except Exception:  # the model cannot take a batch: one image at a time
            _set_batch(interp, spec.index, spec.shape, 1)
            b = 1
    if b == 1:  # one untimed invoke: the first one sets up the delegate's plan
        interp.set_tensor(spec.index, inputs[:1])
        interp.invoke()
    scores = np.empty((n, k), np.float32)
    total = 0.0
    current = b
    for start in range(0, n, b):
        chunk = inputs[start : start + b]
        if len(chunk) != current:
            _set_batch(interp, spec.index, spec.shape, len(chunk))
            current = len(chunk)
        interp.set_tensor(spec.index, chunk)
        t0 = time.perf_counter()
        interp.invoke()
        total += time.perf_counter() - t0
        raw = interp.get_tensor(out.index).reshape(len(chunk), k)
        scores[start : start + len(chunk)] = dequantize(raw, out.quantization.scale, out.quantization.zero_point)
    if current != spec.shape[0]:
        _set_batch(interp, spec.index, spec.shape, spec.shape[0])
    return scores, total, b


def evaluate(
    model: ModelConfig,
    data: Dataset,
    batch: int = 32,
    frames: list[np.ndarray] | None = None,
) -> dict[str, Any]:
    """Accuracy and latency of one model on ``data``: a dict (the --json record)."""
    engine = Engine.load(model)
    if engine.info.task != "classification":
        raise ConfigError(f"{engine.info.name} is a {engine.info.task} model; edged eval measures classifiers")
    truth = class_ids(data.classes, engine.labels)[data.folder_index]
    k = int(np.prod(engine.info.outputs[0].shape))
    if truth.max() >= k:
        raise ConfigError(
            f"{engine.info.name} has {k} classes but the image folder has {len(data.classes)} class folders"
            + ("" if engine.labels else "; pass the model's --labels to match folders by name")
        )
    spec = engine.info.input
    _, h, w, c = spec.shape
    inputs = np.empty((len(data.files), h, w, c), np.dtype(spec.dtype))
    preparer = engine.preparer()
    for i, path in enumerate(data.files):
        frame = frames[i] if frames is not None else read_image(path)
        preparer.prepare(frame, inputs[i])
    scores, seconds, used = run_model(engine, inputs, batch)
    top = np.argsort(-scores, axis=1, kind="stable")[:, : min(5, k)]
    n = len(data.files)
    hits1 = int(np.sum(top[:, 0] == truth))
    hits5 = int(np.sum(np.any(top == truth[:, None], axis=1)))
    return {
        "model": engine.info.path,
        "name": engine.info.name,
        "size_bytes": engine.info.size_bytes,
        "input": {"shape": list(spec.shape), "dtype": spec.dtype},
        "runtime": f"{engine.info.runtime} {engine.runtime_version}".strip(),
        "threads": model.threads,
        "batch": used,
        "images": n,
        "correct_top1": hits1,
        "correct_top5": hits5,
        "top1": hits1 / n,
        "top5": hits5 / n,
        "mean_latency_ms": 1000.0 * seconds / n,
    }


def cmd_eval(args: argparse.Namespace) -> int:
    labels = args.labels or []
    if len(labels) not in (0, 1, len(args.models)):
        raise ConfigError(f"give --labels once, or once per model ({len(args.models)}), not {len(labels)} times")
    if args.batch < 1:
        raise ConfigError("--batch must be at least 1")
    for f in labels:
        read_labels(f)  # a one-line error before any work
    data = load_dataset(args.data)
    frames = [read_image(p) for p in data.files]
    mean, std = parse_floats(args.mean), parse_floats(args.std)
    records = []
    for i, model in enumerate(args.models):
        cfg = ModelConfig(
            path=str(model),
            runtime=args.runtime,
            threads=args.threads,
            labels=labels[0] if len(labels) == 1 else (labels[i] if labels else None),
            resize=args.resize,
            interpolation=args.interpolation,
            mean=mean,
            std=std,
        )
        records.append(evaluate(cfg, data, args.batch, frames))
    if args.json:
        doc = {"data": str(data.root), "images": len(data.files), "classes": data.classes, "models": records}
        print(json.dumps(doc, indent=2))
        return 0
    print(f"{len(data.files)} images in {len(data.classes)} classes from {data.root}")
    rows = [
        (
            r["name"],
            human_size(r["size_bytes"]),
            f"{100 * r['top1']:.2f}%",
            f"{100 * r['top5']:.2f}%",
            f"{r['mean_latency_ms']:.3f}",
            r["batch"],
        )
        for r in records
    ]
    headers = ("model", "size", "top-1", "top-5", "ms/image", "batch")
    print(format_table(headers, rows, right=(False, True, True, True, True, True)))
    return 0
