"""``edged convert``: a Keras model (.keras / .h5) or a SavedModel to TFLite.

``--quantize``:

* ``float32`` — a plain conversion, no quantisation;
* ``float16`` — weights stored as float16 (dequantised at load; runs in float on the CPU);
* ``dynamic`` — dynamic-range: int8 weights, float activations quantised on the fly;
* ``int8`` — full-integer post-training quantisation, what the Edge TPU needs: int8
  weights (per channel, TensorFlow's default; ``--per-tensor`` for one scale a tensor) and
  int8 activations, calibrated on a representative dataset of ``--num-images`` images
  from ``--data`` (searched recursively), with uint8 (default) or int8 input and output.

The representative images go through edged's own preprocessing (resize, BGR->RGB or gray,
``(pixel - mean) / std``), so the quantisation the converter picks for the input is the
one the daemon will feed. Without ``--mean``/``--std`` the model is taken to expect raw
pixels 0..255 (mean 0, std 1); a model trained on pixels / 255 needs ``--std 255``.

After an int8 conversion ``edgetpu_compiler`` runs when it is on PATH (its operator
report is shown); otherwise edged's own compatibility report is shown when this edged
has it, else a pointer to ``edged inspect``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shutil
import subprocess
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..errors import ConfigError, ModelError
from ..model import edgetpu_twin
from ..preprocess import Preprocessor
from ..sources.images import read_image
from .common import find_images, format_table, human_size, import_tensorflow, parse_floats
from .optimize import Plan, check_plan, import_tfmot, labelled_images, load_legacy, optimise
from .parsers import QUANTIZATIONS

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
NOT_KERAS = "is not a Keras model (.keras or .h5) or a SavedModel directory"


def check_source(path: str | Path) -> str:
    """``keras``, ``h5`` or ``savedmodel`` for a model path; a one-line error otherwise (no TensorFlow needed)."""
    p = Path(path)
    if not p.exists():
        raise ModelError(f"model not found: {p}")
    if p.is_dir():
        if (p / "saved_model.pb").is_file() or (p / "saved_model.pbtxt").is_file():
            return "savedmodel"
        raise ModelError(f"{p} {NOT_KERAS} (a SavedModel directory holds saved_model.pb)")
    try:
        with open(p, "rb") as f:
            head = f.read(8)
    except OSError as exc:
        raise ModelError(f"cannot read {p}: {exc.strerror}") from None
    if head == HDF5_MAGIC:
        return "h5"
    if zipfile.is_zipfile(p):
        with zipfile.ZipFile(p) as z:
            if "config.json" in z.namelist():
                return "keras"
    if head[4:8] == b"TFL3":
        raise ModelError(f"{p} is already a TFLite model; convert takes the Keras model or SavedModel it came from")
    raise ModelError(f"{p} {NOT_KERAS}")


def input_shape_of(model: Any) -> tuple[Any, ...]:
    shape = tuple(model.inputs[0].shape)
    if len(model.inputs) != 1:
        raise ModelError(f"edged runs models with one image input; this one has {len(model.inputs)} inputs")
    return shape


def saved_model_input_shape(tf: Any, path: Path) -> tuple[Any, ...]:
    loaded = tf.saved_model.load(str(path))
    sig = loaded.signatures.get("serving_default") if hasattr(loaded, "signatures") else None
    if sig is None:
        raise ModelError(f"{path}: the SavedModel has no serving_default signature")
    _, kwargs = sig.structured_input_signature
    specs = list(kwargs.values())
    if len(specs) != 1:
        raise ModelError(f"edged runs models with one image input; this SavedModel has {len(specs)} inputs")
    return tuple(specs[0].shape)


def representative_images(
    folder: str | Path,
    count: int,
    shape: tuple[Any, ...],
    mean: float | list[float] | None,
    std: float | list[float] | None,
    resize: str,
    interpolation: str,
) -> np.ndarray:
    """[N,H,W,C] float32: ``count`` images of ``folder`` (spread over its sorted list), preprocessed as edged does."""
    if len(shape) != 4 or shape[1] is None or shape[2] is None or shape[3] not in (1, 3):
        raise ModelError(f"the model input {list(shape)} is not an image [N,H,W,1 or 3] of a fixed size")
    files = find_images(folder)
    if count < len(files):
        picks = np.linspace(0, len(files) - 1, count).round().astype(int)
        files = [files[i] for i in picks]
    _, h, w, c = (int(d) if d is not None else 1 for d in shape)
    pre = Preprocessor(
        h, w, c, "float32", resize=resize, interpolation=interpolation,
        mean=0.0 if mean is None else mean, std=1.0 if std is None else std,
    )  # fmt: skip
    out = np.empty((len(files), h, w, c), np.float32)
    for i, f in enumerate(files):
        pre(read_image(f), out[i])
    return out


def convert(
    source: str | Path,
    output: str | Path,
    quantize: str = "float32",
    data: str | Path | None = None,
    num_images: int = 100,
    io_type: str = "uint8",
    mean: float | list[float] | None = None,
    std: float | list[float] | None = None,
    resize: str = "stretch",
    interpolation: str = "linear",
    per_tensor: bool = False,
    keras_model: Any = None,
    dynamic_batch: bool = False,
    plan: Plan | None = None,
) -> Path:
    """Convert ``source`` (or the in-memory ``keras_model``) to ``output``; returns the path written.

    With an active ``plan`` the model is pruned, clustered or QAT-trained first (:mod:`.optimize`)."""
    if quantize not in QUANTIZATIONS:
        raise ConfigError(f"--quantize must be one of {', '.join(QUANTIZATIONS)}, not {quantize!r}")
    kind = "memory" if keras_model is not None else check_source(source)
    plan = plan or Plan()
    check_plan(plan, quantize)
    if plan.active and data is None:
        data = plan.train  # the fine-tuning images calibrate the int8 ranges too
    if quantize == "int8":
        if data is None:
            raise ConfigError("--quantize int8 needs --data DIR: a folder of representative images (100 or so)")
        find_images(data)  # a one-line error for a missing or empty folder, before TensorFlow loads
        if io_type not in ("uint8", "int8"):
            raise ConfigError(f"--io-type must be uint8 or int8 for an int8 model, not {io_type!r}")
    if num_images < 1:
        raise ConfigError("--num-images must be at least 1")
    tf = import_tensorflow()
    with tempfile.TemporaryDirectory(prefix="edged-convert-") as workdir:
        if plan.active:
            keras_model = _optimised(tf, kind, source, keras_model, plan, mean, std, resize, interpolation)
            kind = "memory"
        blob = _convert(tf, kind, source, keras_model, quantize, data, num_images, io_type, mean, std,
                        resize, interpolation, per_tensor, dynamic_batch, Path(workdir))  # fmt: skip
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(blob)
    return out


def _optimised(
    tf: Any, kind: str, source: str | Path, keras_model: Any, plan: Plan,
    mean: Any, std: Any, resize: str, interpolation: str,
) -> Any:  # fmt: skip
    """The source as tf_keras, pruned / clustered / QAT-wrapped and fine-tuned on ``plan.train``."""
    tf.keras.models  # Keras 3 resolved before tfmot's import switches tf.keras to tf_keras  # noqa: B018
    tfk, _ = import_tfmot()
    model = load_legacy(tf, tfk, source, kind, keras_model)
    pre = {"resize": resize, "interpolation": interpolation,
           "mean": 0.0 if mean is None else mean, "std": 1.0 if std is None else std}  # fmt: skip
    shape = input_shape_of(model)
    if len(shape) != 4 or any(d is None for d in shape[1:]):
        raise ModelError(f"the model input {list(shape)} is not an image [N,H,W,C] of a fixed size")
    x, y = labelled_images(plan.train, plan.labels, shape, pre)  # type: ignore[arg-type]
    model, _ = optimise(tf, model, x, y, plan)
    return model


def keras_converter(tf: Any, model: Any, shape: tuple[Any, ...], dynamic_batch: bool, workdir: Path) -> Any:
    """A converter for a Keras model, with a fixed batch of 1 unless ``dynamic_batch``.

    A Keras model converts with a dynamic batch ([-1,H,W,C]), which turns a Flatten into
    SHAPE / STRIDED_SLICE / PACK / RESHAPE computed at run time: none of them maps to the
    Edge TPU, and the graph is cut there. Fixing the batch at 1 (as train_digits.py does:
    a SavedModel exported with a [1,H,W,C] signature) keeps every shape static.
    """
    if dynamic_batch or len(shape) != 4 or any(d is None for d in shape[1:]):
        return tf.lite.TFLiteConverter.from_keras_model(model)
    spec = tf.TensorSpec([1, *(int(d) for d in shape[1:])], tf.float32, name="image")
    saved = workdir / "saved_model"
    try:  # Keras 3
        model.export(str(saved), format="tf_saved_model", verbose=False, input_signature=[spec])
        return tf.lite.TFLiteConverter.from_saved_model(str(saved))
    except TypeError:  # tf_keras (Keras 2): a concrete function of the model's call
        fn = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec)
        return tf.lite.TFLiteConverter.from_concrete_functions([fn], model)


def _convert(
    tf: Any,
    kind: str,
    source: str | Path,
    keras_model: Any,
    quantize: str,
    data: str | Path | None,
    num_images: int,
    io_type: str,
    mean: float | list[float] | None,
    std: float | list[float] | None,
    resize: str,
    interpolation: str,
    per_tensor: bool,
    dynamic_batch: bool,
    workdir: Path,
) -> bytes:
    if kind == "savedmodel":
        converter = tf.lite.TFLiteConverter.from_saved_model(str(source))
        shape = saved_model_input_shape(tf, Path(source)) if quantize == "int8" else ()
    else:
        model = keras_model
        if model is None:
            try:
                model = tf.keras.models.load_model(str(source), compile=False)
            except Exception as exc:  # Keras raises many kinds for a file it cannot read
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise ModelError(f"{source}: Keras cannot load it ({first})") from None
        shape = input_shape_of(model)
        converter = keras_converter(tf, model, shape, dynamic_batch, workdir)
    if quantize == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantize == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif quantize == "int8":
        assert data is not None
        images = representative_images(data, num_images, shape, mean, std, resize, interpolation)

        def gen() -> Iterator[list[np.ndarray]]:
            for i in range(len(images)):
                yield [images[i : i + 1]]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = gen
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8 if io_type == "uint8" else tf.int8
        converter.inference_output_type = tf.uint8 if io_type == "uint8" else tf.int8
        if per_tensor:
            converter._experimental_disable_per_channel = True  # no public switch in TensorFlow
    try:
        # Keras prints "Saved artifact at ..." while exporting; the converter warns about input statistics
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            blob = converter.convert()
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelError(f"TensorFlow Lite could not convert {source}: {first}") from None
    return blob


def compile_for_edgetpu(model: Path) -> tuple[Path | None, str]:
    """Run ``edgetpu_compiler`` (when on PATH) beside the model: (compiled model or None, its report)."""
    exe = shutil.which("edgetpu_compiler")
    if exe is None:
        return None, ""
    proc = subprocess.run(
        [exe, "-s", "-o", str(model.parent), str(model)], capture_output=True, text=True, timeout=600, check=False
    )
    compiled = edgetpu_twin(model)
    report = (proc.stdout + proc.stderr).strip()
    return (compiled if proc.returncode == 0 and compiled.is_file() else None), report


def our_report(model: Path) -> str | None:
    """edged's static Edge TPU compatibility report (:mod:`edged.compat`, as ``edged inspect`` shows it),
    or None when this edged has none."""
    try:
        from .. import compat  # type: ignore[attr-defined]

        _, graph = compat.read_model_file(model)
        return "\n".join(compat.format_report(compat.analyse(graph)))
    except Exception:  # an edged without the report, or one whose API differs: the pointer instead
        return None


def _edged_config_hint(quantize: str, mean: Any, std: Any) -> str:
    """The model-config lines that make the daemon feed what the model was converted for."""
    if quantize == "int8":
        if mean is None and std is None:
            return "edged feeds it raw pixels by default (no mean/std needed in the model config)"
    m = 0.0 if mean is None else mean
    s = 1.0 if std is None else std
    return f"in edged's model config set  mean: {m}  std: {s}"


def plan_of(args: argparse.Namespace) -> Plan:
    return Plan(
        prune=args.prune, clusters=args.cluster, qat=args.qat, train=args.train, labels=args.labels,
        epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate,
    )  # fmt: skip


def compare(args: argparse.Namespace, out: Path, plan: Plan, mean: Any, std: Any) -> list[str]:
    """The optimised model beside the same conversion without the optimisation: size, gzip size, zeros,
    distinct weights a channel, and, with --eval, top-1 on those images through edged's interpreter."""
    from ..config import ModelConfig
    from .evaluate import evaluate, load_dataset
    from .optimize import weight_stats

    with tempfile.TemporaryDirectory(prefix="edged-baseline-") as tmp:
        base = convert(
            args.model, Path(tmp) / "baseline.tflite", args.quantize, args.data or args.train, args.num_images,
            args.io_type, mean, std, args.resize, args.interpolation, args.per_tensor, dynamic_batch=args.dynamic_batch,
        )  # fmt: skip
        rows = [("before", base), ("after", out)]
        data = load_dataset(args.eval) if args.eval else None
        pre = {"mean": mean, "std": std, "resize": args.resize, "interpolation": args.interpolation}
        table = []
        for name, path in rows:
            st = weight_stats(path)
            acc = ""
            if data is not None:
                cfg = ModelConfig(path=str(path), labels=args.labels, **pre)
                acc = f"{100 * evaluate(cfg, data)['top1']:.2f}%"
            table.append([name, human_size(st.size_bytes), human_size(st.gzip_bytes), f"{100 * st.sparsity:.1f}%",
                          str(st.distinct_per_channel), acc])  # fmt: skip
    heads = ["model", "size", "gzip", "zero weights", "distinct/channel", f"top-1 on {args.eval}" if data else ""]
    return format_table(heads, table, [False, True, True, True, True, True]).splitlines()


def cmd_convert(args: argparse.Namespace) -> int:
    from ..model import load_model

    mean, std = parse_floats(args.mean), parse_floats(args.std)
    plan = plan_of(args)
    out = convert(
        args.model, args.output, args.quantize, args.data, args.num_images, args.io_type, mean, std,
        args.resize, args.interpolation, args.per_tensor, dynamic_batch=args.dynamic_batch, plan=plan,
    )  # fmt: skip
    info = load_model(out).info
    src = Path(args.model)
    src_size = sum(f.stat().st_size for f in src.rglob("*") if f.is_file()) if src.is_dir() else src.stat().st_size
    print(f"wrote {out} ({human_size(info.size_bytes)}; {args.quantize}; the source is {human_size(src_size)})")
    for role, t in [("input", info.input)] + [("output", o) for o in info.outputs]:
        q = t.quantization
        qtext = f", scale {q.scale:.6g} zero point {q.zero_point}" if q.quantized else ""
        print(f"  {role} {t.name}: {list(t.shape)} {t.dtype}{qtext}")
    print(f"  {_edged_config_hint(args.quantize, mean, std)}")
    if plan.active:
        print(f"{plan.describe()}: {plan.epochs} epochs of fine-tuning on {args.train}; before: {args.quantize} alone")
        print("\n".join("  " + ln for ln in compare(args, out, plan, mean, std)))
    if args.quantize != "int8":
        print("Edge TPU: needs a full-integer model (--quantize int8); not compiled")
        return 0
    if not args.no_compile and shutil.which("edgetpu_compiler"):
        compiled, report = compile_for_edgetpu(out)
        print("edgetpu_compiler:")
        print("\n".join("  " + ln for ln in report.splitlines()))
        if compiled is None:
            raise ModelError(f"edgetpu_compiler failed on {out}")
        print(f"wrote {compiled}")
        return 0
    report = our_report(out)
    if report is not None:
        print("Edge TPU compatibility (edged's report; edgetpu_compiler is not installed):")
        print(report)
    else:
        print(f"Edge TPU: edgetpu_compiler is not installed; see `edged inspect {out}` for the model's operators")
    return 0
