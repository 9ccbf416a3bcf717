"""Pruning, weight clustering and quantisation-aware training for ``edged convert``.

All three fine-tune the model on the user's labelled images (``--train DIR``, one folder per
class, as ``edged eval`` reads them) with TensorFlow Model Optimization (tfmot), which works on
Keras 2 models only (``tf_keras``). A Keras 2 file (.h5 or a SavedModel written by tf_keras)
loads as it is; a Keras 3 model is rebuilt in tf_keras from its configuration and weights.

* ``--prune S``: magnitude pruning (``prune_low_magnitude``) of every prunable layer, the
  sparsity raised from 0 to ``S`` over the first three quarters of the fine-tuning steps,
  then ``strip_pruning``. The file is the same size; it compresses better.
* ``--cluster N``: weight clustering (``cluster_weights``, k-means++ centroids) to ``N``
  values per layer weight, then ``strip_clustering``. With ``--prune`` the clustering
  preserves the zeros (``preserve_sparsity``).
* ``--qat`` (with ``--quantize int8``): quantisation-aware training; after pruning or
  clustering it is the collaborative kind that keeps their zeros and centroids
  (tfmot's prune-preserving and cluster-preserving quantisation schemes).
"""

from __future__ import annotations

import inspect
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, ModelError
from ..labels import read_labels
from ..preprocess import Preprocessor
from ..sources.images import read_image
from .common import MissingTensorFlow
from .evaluate import class_ids, load_dataset

TFMOT_HINT = "pruning, clustering and QAT need tf_keras and tensorflow-model-optimization: pip install 'edged[convert]'"


@dataclass(frozen=True)
class Plan:
    """What to do to the model before it is converted (nothing when every field is unset)."""

    prune: float | None = None  # target sparsity, 0 < S < 1
    clusters: int | None = None  # weight clusters per layer
    qat: bool = False
    train: str | Path | None = None  # labelled image folder for the fine-tuning
    labels: str | Path | None = None  # the model's labels file: class folders matched by name
    epochs: int = 2
    batch_size: int = 32
    learning_rate: float = 1e-4

    @property
    def active(self) -> bool:
        return self.prune is not None or self.clusters is not None or self.qat

    def describe(self) -> str:
        done = []
        if self.prune is not None:
            done.append(f"pruned to {100 * self.prune:g}% sparsity")
        if self.clusters is not None:
            done.append(f"clustered to {self.clusters} weights a layer")
        if self.qat:
            done.append("quantisation-aware trained")
        return ", ".join(done)


def check_plan(plan: Plan, quantize: str) -> None:
    """One-line errors for a plan that cannot run, before TensorFlow loads."""
    if not plan.active:
        return
    if plan.prune is not None and not 0.0 < plan.prune < 1.0:
        raise ConfigError(f"--prune is the sparsity, over 0 and under 1 (0.5: half the weights 0), not {plan.prune}")
    if plan.clusters is not None and not 2 <= plan.clusters <= 256:
        raise ConfigError(f"--cluster must be between 2 and 256 clusters, not {plan.clusters}")
    if plan.qat and quantize != "int8":
        raise ConfigError(f"--qat trains for int8: use it with --quantize int8, not {quantize}")
    if plan.train is None:
        raise ConfigError(f"{plan.describe()} needs --train DIR: labelled images, a folder per class, to fine-tune on")
    if plan.epochs < 1 or plan.batch_size < 1 or plan.learning_rate <= 0:
        raise ConfigError("--epochs and --batch-size must be at least 1 and --learning-rate above 0")
    load_dataset(plan.train)  # a one-line error for a missing or empty folder


def import_tfmot() -> tuple[Any, Any]:
    """(tf_keras, tensorflow_model_optimization); a one-line error when they are not installed.

    tfmot sets TF_USE_LEGACY_KERAS=1 in the environment when it is imported, which would make
    ``tf.keras`` tf_keras in every process started afterwards (a training script, say): it is
    put back as it was."""
    import os

    before = os.environ.get("TF_USE_LEGACY_KERAS")
    try:
        import tensorflow_model_optimization as tfmot
        import tf_keras
    except ImportError:
        raise MissingTensorFlow(TFMOT_HINT) from None
    finally:
        if before is None:
            os.environ.pop("TF_USE_LEGACY_KERAS", None)
        else:
            os.environ["TF_USE_LEGACY_KERAS"] = before
    return tf_keras, tfmot


def labelled_images(
    folder: str | Path, labels: str | Path | None, shape: tuple[Any, ...], pre: dict[str, Any]
) -> tuple[np.ndarray, np.ndarray]:
    """Every image of the class folders, preprocessed as edged does ([N,H,W,C] float32), and its class id."""
    data = load_dataset(folder)
    ids = class_ids(data.classes, read_labels(labels) if labels else None)[data.folder_index]
    _, h, w, c = (1 if d is None else int(d) for d in shape)
    prep = Preprocessor(h, w, c, "float32", **pre)
    x = np.empty((len(data.files), h, w, c), np.float32)
    for i, f in enumerate(data.files):
        prep(read_image(f), x[i])
    return x, ids


def _legacy_config(node: Any) -> Any:
    """A Keras 3 model configuration as tf_keras reads it (for the layers both have)."""
    if isinstance(node, list):
        return [_legacy_config(v) for v in node]
    if not isinstance(node, dict):
        return node
    if node.get("class_name") == "DTypePolicy":
        return node["config"]["name"]
    if str(node.get("module", "")).startswith("keras.initializers"):
        return {"class_name": node["class_name"], "config": {}}  # the weights are set afterwards
    out = {k: _legacy_config(v) for k, v in node.items() if k not in ("module", "registered_name", "build_config")}
    if out.get("class_name") == "InputLayer" and "batch_shape" in out.get("config", {}):
        cfg = dict(out["config"])
        cfg["batch_input_shape"] = cfg.pop("batch_shape")
        cfg.pop("optional", None)
        out["config"] = cfg
    return out


def _accepted(tfk: Any, layer: dict[str, Any]) -> dict[str, Any]:
    """The layer's configuration without the keys its tf_keras class does not take (e.g. Keras 3's lora_rank)."""
    cls = vars(tfk.layers).get(layer.get("class_name", ""))
    if cls is None or layer["class_name"] in ("InputLayer", "Sequential", "Functional", "Model"):
        return layer
    names = set(inspect.signature(cls.__init__).parameters) | {"name", "trainable", "dtype", "batch_input_shape"}
    return {**layer, "config": {k: v for k, v in layer["config"].items() if k in names}}


def to_legacy(tf: Any, tfk: Any, model: Any, source: str | Path) -> Any:
    """A tf_keras copy of a Keras 3 model: the same layers and weights."""
    cfg = _legacy_config(json.loads(model.to_json()))
    cfg["config"]["layers"] = [_accepted(tfk, layer) for layer in cfg["config"]["layers"]]
    try:
        legacy = tfk.models.model_from_json(json.dumps(cfg))
        legacy.set_weights(model.get_weights())
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ModelError(
            f"{source}: this Keras 3 model cannot be rebuilt in tf_keras (Keras 2), which TensorFlow Model "
            f"Optimization needs ({first}); save it with tf_keras as .h5 and convert that"
        ) from None
    return legacy


def load_legacy(tf: Any, tfk: Any, source: str | Path, kind: str, keras_model: Any) -> Any:
    """The model as tf_keras (Keras 2): loaded by tf_keras, else loaded by Keras 3 and rebuilt."""
    if keras_model is not None:
        return keras_model if isinstance(keras_model, tfk.Model) else to_legacy(tf, tfk, keras_model, "the model")
    try:
        return tfk.models.load_model(str(source), compile=False)
    except Exception:  # not a Keras 2 file: Keras 3's, or not loadable at all (Keras 3 says why below)
        pass
    if kind == "savedmodel":
        raise ModelError(f"{source}: pruning, clustering and QAT need a Keras model (.keras, .h5), not a SavedModel")
    try:
        model = tf.keras.models.load_model(str(source), compile=False)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelError(f"{source}: Keras cannot load it ({first})") from None
    return to_legacy(tf, tfk, model, source)


def _softmax_output(model: Any) -> bool:
    last = model.layers[-1]
    return type(last).__name__ == "Softmax" or last.get_config().get("activation") == "softmax"


def _fit(tfk: Any, model: Any, x: np.ndarray, y: np.ndarray, plan: Plan, probs: bool, callbacks: list[Any]) -> None:
    import logging

    loss = tfk.losses.SparseCategoricalCrossentropy(from_logits=not probs)
    model.compile(optimizer=tfk.optimizers.Adam(plan.learning_rate), loss=loss, metrics=["accuracy"])
    tf_log = logging.getLogger("tensorflow")
    level = tf_log.level
    tf_log.setLevel(logging.ERROR)  # cluster-preserving QAT trains the centroids: "Gradients do not exist" for kernels
    try:
        model.fit(x, y, epochs=plan.epochs, batch_size=plan.batch_size, shuffle=True, verbose=0, callbacks=callbacks)
    finally:
        tf_log.setLevel(level)


def _steps(n: int, plan: Plan) -> int:
    return plan.epochs * -(-n // plan.batch_size)


def optimise(tf: Any, model: Any, x: np.ndarray, y: np.ndarray, plan: Plan) -> tuple[Any, float]:
    """The tf_keras ``model`` pruned / clustered / QAT-wrapped and fine-tuned: (model to convert, seconds)."""
    tfk, tfmot = import_tfmot()
    k = int(np.max(y)) + 1
    outputs = int(model.outputs[0].shape[-1])
    if k > outputs:
        raise ConfigError(f"the model has {outputs} outputs but --train has class ids up to {k - 1}")
    probs = _softmax_output(model)
    t0 = time.perf_counter()
    try:
        if plan.prune is not None:
            end = max(1, int(0.75 * _steps(len(x), plan)))
            schedule = tfmot.sparsity.keras.PolynomialDecay(0.0, plan.prune, begin_step=0, end_step=end, frequency=1)
            prune = tfmot.sparsity.keras.prune_low_magnitude
            model = _wrap_each(tfk, model, _registry("prune"), lambda la: prune(la, pruning_schedule=schedule))
            _fit(tfk, model, x, y, plan, probs, [tfmot.sparsity.keras.UpdatePruningStep()])
            model = tfmot.sparsity.keras.strip_pruning(model)
        if plan.clusters is not None:
            cl = tfmot.clustering.keras
            init = cl.CentroidInitialization.KMEANS_PLUS_PLUS
            opts = {"number_of_clusters": plan.clusters, "cluster_centroids_init": init,
                    "preserve_sparsity": plan.prune is not None}  # fmt: skip
            model = _wrap_each(tfk, model, _registry("cluster"), lambda la: cl.cluster_weights(la, **opts))
            _fit(tfk, model, x, y, plan, probs, [])
            model = cl.strip_clustering(model)
        if plan.qat:
            model = _qat(tfk, tfmot, model, plan)
            _fit(tfk, model, x, y, plan, probs, [])
    except (ValueError, TypeError) as exc:  # tfmot refuses a layer it cannot wrap
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise ModelError(f"TensorFlow Model Optimization refuses the model ({plan.describe()}): {first}") from None
    return model, time.perf_counter() - t0


def _registry(kind: str) -> Any:
    """Whether tfmot can wrap a layer for ``kind`` (its own registries: a Rescaling or a Flatten it cannot)."""
    if kind == "prune":
        from tensorflow_model_optimization.python.core.sparsity.keras.prune_registry import PruneRegistry

        return PruneRegistry.supports
    if kind == "cluster":
        from tensorflow_model_optimization.python.core.clustering.keras.clustering_registry import (
            ClusteringRegistry,
        )

        return ClusteringRegistry.supports
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
        default_8bit_quantize_registry as q8,
    )

    return q8.Default8BitQuantizeRegistry().supports


def _wrap_each(tfk: Any, model: Any, supports: Any, wrap: Any) -> Any:
    """The model with every layer tfmot supports wrapped (the layer itself, its weights kept, as tfmot's
    whole-model functions do), the others (no weights to optimise: Rescaling, Flatten) as they are."""
    return tfk.models.clone_model(model, clone_function=lambda layer: wrap(layer) if supports(layer) else layer)


def _qat(tfk: Any, tfmot: Any, model: Any, plan: Plan) -> Any:
    """The model wrapped for QAT. A layer tfmot's 8-bit scheme does not know is refused: annotated with a no-op
    config (a Rescaling, say) it converts to a model that is wrong (every image one class, measured)."""
    q = tfmot.quantization.keras
    supported = _registry("qat")
    unknown = [la for la in model.layers if not supported(la) and type(la).__name__ != "InputLayer"]
    if unknown:
        names = ", ".join(sorted({type(la).__name__ for la in unknown}))
        raise ModelError(
            f"--qat: TensorFlow Model Optimization cannot quantise the {names} layer of this model; convert without "
            "--qat (post-training int8), or take the layer out of the model (for a Rescaling: pass --mean/--std)"
        )
    annotated = _wrap_each(tfk, model, supported, q.quantize_annotate_layer)
    exp = tfmot.experimental.combine
    if plan.clusters is not None:
        scheme = exp.Default8BitClusterPreserveQuantizeScheme(preserve_sparsity=plan.prune is not None)
    elif plan.prune is not None:
        scheme = exp.Default8BitPrunePreserveQuantizeScheme()
    else:
        scheme = q.default_8bit.Default8BitQuantizeScheme()
    return q.quantize_apply(annotated, scheme)


@dataclass(frozen=True)
class WeightStats:
    """What pruning and clustering change in a .tflite file: its size, gzip size, zeros and distinct weights."""

    size_bytes: int
    gzip_bytes: int
    weights: int  # elements of the weight tensors (constant, float or int8, 2 or more dimensions)
    zeros: int
    distinct_per_channel: int  # the most distinct values in one output channel of one weight tensor

    @property
    def sparsity(self) -> float:
        return self.zeros / self.weights if self.weights else 0.0


WEIGHT_TYPES = {"float32": np.float32, "float16": np.float16, "int8": np.int8}


def weight_stats(path: str | Path) -> WeightStats:
    """Read the weights of a .tflite file (edged's own parser, no interpreter): see :class:`WeightStats`."""
    import gzip

    from ..tflite_schema import read_graph

    blob = Path(path).read_bytes()
    graph = read_graph(blob)
    weights = zeros = distinct = 0
    for sg in graph.subgraphs:
        for t in sg.tensors:
            kind = WEIGHT_TYPES.get(t.dtype)
            if kind is None or not t.constant or len(t.shape) < 2:
                continue
            data = np.frombuffer(graph.buffer_data(t), dtype=kind)
            if data.size != int(np.prod(t.shape)):
                continue  # not a dense tensor (a sparse-format buffer): left out
            values = data.reshape(t.shape)
            weights += values.size
            zeros += int(np.count_nonzero(values == 0))
            axis = t.quantized_dimension
            per_channel = np.moveaxis(values, axis, 0).reshape(t.shape[axis], -1)
            distinct = max(distinct, max(len(np.unique(row)) for row in per_channel))
    return WeightStats(len(blob), len(gzip.compress(blob, 9)), weights, zeros, distinct)
