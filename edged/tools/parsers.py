"""The toolchain's command-line parsers: argparse only, so that ``edged --help`` and the
daemon's other commands do not import numpy, OpenCV or the interpreter for them."""

from __future__ import annotations

import argparse
from typing import Any

QUANTIZATIONS = ("float32", "float16", "dynamic", "int8")
EVAL_TAIL = (
    "Class folders are matched to --labels by name; without --labels the folders in sorted order are "
    "class ids 0, 1, 2, ... Without --mean/--std raw pixels are fed, as the daemon does."
)


def add_preprocessing_options(p: argparse.ArgumentParser, raw_help: str) -> None:
    """The preprocessing options of edged's model configuration (``model:`` in the YAML)."""
    p.add_argument("--mean", help="normalisation mean in pixels, one value or one per channel (RGB)")
    p.add_argument("--std", help="normalisation std in pixels, one value or one per channel (RGB)")
    p.add_argument("--resize", choices=("stretch", "letterbox"), default="stretch", help="as the model config's")
    p.add_argument(
        "--interpolation", choices=("linear", "nearest", "area"), default="linear", help="as the model config's"
    )
    p.epilog = (p.epilog or "") + raw_help


def add_optimisation_options(p: argparse.ArgumentParser) -> None:
    """Pruning, clustering and QAT (TensorFlow Model Optimization), fine-tuned on labelled images."""
    g = p.add_argument_group("pruning, clustering and quantisation-aware training (fine-tuned on --train)")
    g.add_argument("--prune", type=float, metavar="S", help="magnitude pruning to sparsity S (0.5: half the weights 0)")
    g.add_argument("--cluster", type=int, metavar="N", help="weight clustering to N values a layer (e.g. 16)")
    g.add_argument("--qat", action="store_true", help="quantisation-aware training (with --quantize int8)")
    g.add_argument("--train", metavar="DIR", help="labelled images to fine-tune on: one folder per class")
    g.add_argument("--labels", metavar="FILE", help="the model's labels file: class folders matched by name")
    g.add_argument("--epochs", type=int, default=2, help="fine-tuning epochs (default 2)")
    g.add_argument("--batch-size", type=int, default=32, help="fine-tuning batch (default 32)")
    g.add_argument("--learning-rate", type=float, default=1e-4, help="fine-tuning Adam learning rate (default 1e-4)")
    g.add_argument("--eval", metavar="DIR", help="labelled images: top-1 before and after, in the report")


def add_convert(sub: Any) -> None:
    p = sub.add_parser(
        "convert",
        help="Keras (.keras / .h5) or SavedModel to TFLite: float32, float16, dynamic-range or int8",
        description="Convert a Keras model or a SavedModel to TFLite, optionally quantised; int8 takes a "
        "representative dataset from an image folder and is then compiled for the Edge TPU when edgetpu_compiler "
        "is installed. Needs TensorFlow: pip install 'edged[convert]'.",
    )
    p.add_argument("model", metavar="MODEL", help="a .keras or .h5 file, or a SavedModel directory")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="the .tflite file to write")
    p.add_argument("--quantize", choices=QUANTIZATIONS, default="float32", help="default float32 (none)")
    p.add_argument("--data", metavar="DIR", help="representative images for int8 (searched recursively)")
    p.add_argument("--num-images", type=int, default=100, help="representative images to use (default 100)")
    p.add_argument("--io-type", choices=("uint8", "int8"), default="uint8", help="int8 model's input/output type")
    p.add_argument("--per-tensor", action="store_true", help="one weight scale per tensor, not per channel")
    p.add_argument("--no-compile", action="store_true", help="do not run edgetpu_compiler")
    p.add_argument(
        "--dynamic-batch",
        action="store_true",
        help="keep a Keras model's dynamic batch (edged eval can batch it; the Edge TPU cannot map its Flatten)",
    )
    add_optimisation_options(p)
    add_preprocessing_options(
        p,
        "Without --mean/--std the model is taken to expect raw pixels 0..255; "
        "for a model trained on pixels/255 pass --std 255, for [-1,1] --mean 127.5 --std 127.5.",
    )


def add_eval(sub: Any) -> None:
    p = sub.add_parser(
        "eval",
        help="top-1 / top-5 accuracy of classification models on a labelled image folder",
        description="Top-1 / top-5 accuracy, size and latency of one or more classification models on an image "
        "folder with one subfolder per class, through edged's own preprocessing.",
    )
    p.add_argument("models", nargs="+", metavar="MODEL", help=".tflite classification models (CPU)")
    p.add_argument("--data", required=True, metavar="DIR", help="folder with one subfolder of images per class")
    p.add_argument(
        "--labels", action="append", metavar="FILE", help="labels file: once for every model, or once per model"
    )
    p.add_argument("--batch", type=int, default=32, help="images per invoke where the model allows (default 32)")
    p.add_argument("--threads", type=int, default=None, help="interpreter threads (default: all cores)")
    p.add_argument("--runtime", default="auto", help="TFLite runtime: auto, ai_edge_litert, tflite_runtime, ...")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    add_preprocessing_options(p, EVAL_TAIL)


def add_bench(sub: Any) -> None:
    p = sub.add_parser(
        "bench",
        help="latency percentiles, throughput and first-inference time of a model",
        description="Latency p50/p90/p99 and throughput after warm-up, and first-inference time (load + first "
        "invoke), on the CPU with each thread count and on the Edge TPU when present.",
    )
    p.add_argument("model", metavar="MODEL", help=".tflite model (an _edgetpu model: its CPU twin runs on the CPU)")
    p.add_argument("--threads", help="CPU thread counts, e.g. 1,2 or 1-4 (default 1..cores, at most 4)")
    p.add_argument("--warmup", type=int, default=10, help="untimed invokes first (default 10)")
    p.add_argument("--runs", type=int, default=100, help="timed invokes (default 100)")
    p.add_argument("--runtime", default="auto", help="TFLite runtime for the CPU: auto, ai_edge_litert, ...")
    p.add_argument("--edgetpu", choices=("auto", "on", "off"), default="auto", help="the Edge TPU run (default auto)")
    p.add_argument("--edgetpu-library", help="the delegate library (default libedgetpu.so.1)")
    p.add_argument("--device", help="Edge TPU selector: usb, usb:0, pci:1, ...")
    p.add_argument("--json", action="store_true", help="machine-readable output")
