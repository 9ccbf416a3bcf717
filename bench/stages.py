"""Per-stage time of one frame, edged's pipeline against a naive baseline, in one run.

    python bench/stages.py [--frames 200] [--threads 2] [--testdata DIR]

For each model (the bundled digits model and the reference models of ../shared/testdata)
a 1280x720 BGR frame goes through edged's Engine (preprocess into the input tensor with
the lookup table, invoke, postprocess) and, side by side on the same interpreter, through
the loop a tutorial writes (cv2.resize, cvtColor, float arithmetic ``x / scale + zp``
per pixel, astype, set_tensor, invoke, get_tensor, dequantise everything, argsort).
Prints p50/p99 of each stage in milliseconds and the ratios baseline/edged. Not a test:
timings depend on the machine; tests assert behaviour.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edged.config import builtin_model_dir  # noqa: E402
from edged.inference import Engine  # noqa: E402
from edged.runtime import available  # noqa: E402


def pct(values: list[float], q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, int(round(q / 100 * (len(v) - 1))))] * 1e3


def naive(engine: Engine, frame: np.ndarray) -> dict[str, float]:
    interp = engine.loaded.interpreter
    spec = engine.info.input
    _, h, w, _ = spec.shape
    t0 = time.perf_counter()
    rgb = cv2.cvtColor(cv2.resize(frame, (w, h)), cv2.COLOR_BGR2RGB)
    scale, zp = spec.quantization.scale, spec.quantization.zero_point
    x = rgb.astype(np.float32) / 255.0  # the float input a tutorial computes
    if spec.dtype != "float32":  # ... then quantises it per pixel: x / scale + zero_point
        info = np.iinfo(spec.dtype)
        x = np.clip(np.round(x / scale + zp), info.min, info.max).astype(spec.dtype)
    interp.set_tensor(spec.index, x[None])
    t1 = time.perf_counter()
    interp.invoke()
    t2 = time.perf_counter()
    outs = [interp.get_tensor(o.index) for o in engine.info.outputs]
    deq = [
        (o.astype(np.float32) - t.quantization.zero_point) * (t.quantization.scale or 1.0)
        for o, t in zip(outs, engine.info.outputs)
    ]
    if engine.info.task == "classification":
        np.argsort(-deq[0].reshape(-1))[:3]
    t3 = time.perf_counter()
    return {"preprocess": t1 - t0, "inference": t2 - t1, "postprocess": t3 - t2}


def run(model: Path, labels: Path | None, frame: np.ndarray, frames: int, threads: int, runtime: str) -> None:
    engine = Engine.from_file(model, runtime=runtime, threads=threads, labels=str(labels) if labels else None)
    for _ in range(10):  # warm-up
        engine.process(frame)
        naive(engine, frame)
    ours: dict[str, list[float]] = {"preprocess": [], "inference": [], "postprocess": []}
    base: dict[str, list[float]] = {"preprocess": [], "inference": [], "postprocess": []}
    for _ in range(frames):  # interleaved, so both see the same machine state
        for k, v in engine.process(frame).timings.items():
            ours[k].append(v)
        for k, v in naive(engine, frame).items():
            base[k].append(v)
    total_o = [sum(x) for x in zip(*ours.values())]
    total_b = [sum(x) for x in zip(*base.values())]
    name = model.name.replace(".tflite", "")
    print(
        f"| {name} | {runtime} | "
        + " | ".join(f"{pct(ours[k], 50):.2f} / {pct(ours[k], 99):.2f}" for k in ours)
        + f" | {pct(total_o, 50):.2f} | {pct(total_b, 50):.2f} | "
        f"{statistics.median(base['preprocess']) / statistics.median(ours['preprocess']):.1f}x | "
        f"{statistics.median(total_b) / statistics.median(total_o):.2f}x |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument(
        "--testdata",
        default=os.environ.get("EDGED_TESTDATA", str(Path(__file__).resolve().parents[2] / "shared" / "testdata")),
    )
    ap.add_argument("--runtime", action="append", help="runtime(s) to measure (default: every one installed)")
    args = ap.parse_args()
    td = Path(args.testdata)
    frame = (
        cv2.resize(cv2.imread(str(td / "images" / "cat_720p.jpg")), (1280, 720))
        if td.is_dir()
        else np.random.default_rng(0).integers(0, 255, (720, 1280, 3), dtype=np.uint8)
    )
    models = [(builtin_model_dir() / "digits_int8.tflite", builtin_model_dir() / "digits_labels.txt")]
    if td.is_dir():
        models += [
            (td / "models" / "mobilenet_v1_0.25_128_quant.tflite", td / "models" / "imagenet_labels.txt"),
            (td / "models" / "mobilenet_v2_1.0_224_quant.tflite", td / "models" / "imagenet_labels.txt"),
            (td / "models" / "ssd_mobilenet_v1_coco_quant_postprocess.tflite", td / "models" / "coco_labels.txt"),
        ]
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.processor() or platform.platform()}, "
        f"python {platform.python_version()}, numpy {np.__version__}, opencv {cv2.__version__}, "
        f"{args.threads} interpreter threads, {args.frames} frames of 1280x720 after 10 warm-up"
    )
    print("\np50 / p99 in ms per stage (edged); total p50 edged vs naive; ratios naive/edged (>1: edged faster)\n")
    print(
        "| model | runtime | preprocess | inference | postprocess | total edged | total naive "
        "| preprocess ratio | total ratio |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for rt in args.runtime or available():
        for model, labels in models:
            run(model, labels, frame, args.frames, args.threads, rt)


if __name__ == "__main__":
    main()
