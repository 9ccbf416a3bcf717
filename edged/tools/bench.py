"""``edged bench MODEL``: latency percentiles, throughput and first-inference time.

For each CPU thread count a fresh interpreter is built (edged's
:func:`~edged.model.load_model`, as the daemon's CPU engine does): the first-inference
time is the load plus the first invoke, then ``--warmup`` invokes are discarded and
``--runs`` invokes are timed one by one (p50 / p90 / p99 / mean, linear-interpolated
percentiles) and together (throughput = runs / wall time).

The Edge TPU runs through the daemon's own machinery: a :class:`~edged.worker.DeviceWorker`
child process with the delegate, the input in shared memory. Its first-inference time is
the worker's start (spawn, delegate, model load, the model upload of the first invoke);
its latency is the round trip a stream sees. ``--edgetpu auto`` (the default) uses a TPU
when one is discovered and the model is compiled for it (``foo_edgetpu.tflite``, given or
beside the model); ``on`` insists (and fails with the reason); ``off`` skips it.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import AcceleratorError, ConfigError, ModelError
from ..model import load_model
from .common import format_table, human_size

PERCENTILES = (50, 90, 99)


def parse_threads(text: str | None) -> list[int]:
    """``1,2`` or ``1-4`` (or a mix); default 1..min(cores, 4)."""
    if text is None:
        n = min(os.cpu_count() or 1, 4)
        return list(range(1, n + 1))
    out: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if not part:
                continue
            if "-" in part:
                a, b = (int(x) for x in part.split("-", 1))
                out += list(range(a, b + 1))
            else:
                out.append(int(part))
    except ValueError:
        raise ConfigError(f"--threads takes numbers like 1,2 or 1-4, not {text!r}") from None
    if not out or any(t < 1 or t > 64 for t in out):
        raise ConfigError(f"--threads takes thread counts from 1 to 64, not {text!r}")
    return sorted(set(out))


def random_input(shape: tuple[int, ...], dtype: str, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if dtype in ("uint8", "int8"):
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max + 1, size=shape, dtype=dtype)
    return rng.uniform(-1.0, 1.0, size=shape).astype(dtype)


def summarize(latencies: list[float], wall: float) -> dict[str, Any]:
    a = np.asarray(latencies, dtype=np.float64) * 1000.0
    p = np.percentile(a, PERCENTILES)
    return {
        "latency_ms": {
            "mean": float(a.mean()),
            "min": float(a.min()),
            **{f"p{q}": float(v) for q, v in zip(PERCENTILES, p)},
            "max": float(a.max()),
        },
        "throughput_per_s": len(a) / wall if wall > 0 else None,
    }


def bench_cpu(model: str | Path, threads: int, warmup: int, runs: int, runtime: str = "auto") -> dict[str, Any]:
    t0 = time.perf_counter()
    loaded = load_model(model, runtime, threads)
    t1 = time.perf_counter()
    interp, spec = loaded.interpreter, loaded.info.input
    interp.set_tensor(spec.index, random_input(spec.shape, spec.dtype))
    interp.invoke()
    t2 = time.perf_counter()
    for _ in range(warmup):
        interp.invoke()
    lat = []
    w0 = time.perf_counter()
    for _ in range(runs):
        s = time.perf_counter()
        interp.invoke()
        lat.append(time.perf_counter() - s)
    wall = time.perf_counter() - w0
    return {
        "accelerator": "cpu",
        "threads": threads,
        "runtime": f"{loaded.runtime.name} {loaded.runtime.version}".strip(),
        "load_ms": 1000.0 * (t1 - t0),
        "first_invoke_ms": 1000.0 * (t2 - t1),
        "first_inference_ms": 1000.0 * (t2 - t0),
        **summarize(lat, wall),
    }


def bench_edgetpu(model: Path, warmup: int, runs: int, library: str | None, selector: str | None) -> dict[str, Any]:
    """The model on an Edge TPU worker (raises WorkerFailure when the delegate or model fails)."""
    from ..edgetpu import default_library
    from ..inference.placement import delegate_runtime
    from ..runtime import get_runtime
    from ..worker import DeviceWorker

    worker = DeviceWorker("bench", selector, library or default_library(), {}, delegate_runtime("auto"), deadline=30.0)
    worker.register("bench", str(model))
    try:
        t0 = time.perf_counter()
        worker.start()
        first = time.perf_counter() - t0
        m = worker.models["bench"]
        assert m.info is not None
        data = random_input(m.info.input.shape, m.info.input.dtype)
        for _ in range(warmup):
            worker.infer("bench", data)
        lat, invoke = [], []
        w0 = time.perf_counter()
        for _ in range(runs):
            s = time.perf_counter()
            _, seconds = worker.infer("bench", data)
            lat.append(time.perf_counter() - s)
            invoke.append(seconds)
        wall = time.perf_counter() - w0
        result = {
            "accelerator": "edgetpu",
            "threads": None,
            "model": str(model),
            "runtime": f"{get_runtime(worker.runtime).name} {worker.runtime_version}".strip(),
            "first_inference_ms": 1000.0 * first,
            "first_invoke_ms": 1000.0 * (m.first_inference_seconds or 0.0),
            "invoke_p50_ms": float(np.percentile(np.asarray(invoke) * 1000.0, 50)),
            **summarize(lat, wall),
        }
    finally:
        worker.close()
    return result


def run_bench(
    model: str | Path,
    threads: list[int],
    warmup: int = 10,
    runs: int = 100,
    runtime: str = "auto",
    edgetpu: str = "auto",
    library: str | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    from ..edgetpu import list_edge_tpus, model_pair
    from ..model import EDGETPU_CUSTOM_OP
    from ..worker import WorkerFailure

    p = Path(model)
    if warmup < 0 or runs < 1:
        raise ConfigError("--warmup must be 0 or more and --runs at least 1")
    if not p.is_file():
        raise ModelError(f"model file not found: {p}" if not p.exists() else f"model path is not a file: {p}")
    # an Edge TPU model: its CPU twin (when beside it) runs on the CPU; a CPU model: its Edge TPU twin on the TPU
    tpu_model, cpu_model = model_pair(p)
    doc: dict[str, Any] = {"model": str(p.resolve()), "size_bytes": p.stat().st_size}
    if cpu_model is not None:
        info = load_model(cpu_model, runtime).info
        doc["input"] = {"shape": list(info.input.shape), "dtype": info.input.dtype}
        if EDGETPU_CUSTOM_OP in info.custom_ops:
            cpu_model = None
    doc.update({"warmup": warmup, "runs": runs, "threads": threads, "results": []})
    if cpu_model is not None:
        doc["cpu_model"] = str(cpu_model)
        for t in threads:
            doc["results"].append(bench_cpu(cpu_model, t, warmup, runs, runtime))
    tpu_status: dict[str, Any] = {"mode": edgetpu, "ran": False}
    if edgetpu != "off":
        if edgetpu == "on" and tpu_model is None:
            tpu_model = p  # as asked: the model itself with the delegate
        found = list_edge_tpus()
        tpu_status["devices"] = [t.selector for t in found]
        if tpu_model is None:
            tpu_status["reason"] = "no Edge TPU-compiled model (foo_edgetpu.tflite) given or beside the model"
        elif not found and edgetpu == "auto":
            tpu_status["reason"] = "no Edge TPU found"
        else:
            try:
                doc["results"].append(bench_edgetpu(tpu_model, warmup, runs, library, device))
                tpu_status["ran"] = True
            except WorkerFailure as exc:
                if edgetpu == "on":
                    raise AcceleratorError(f"Edge TPU benchmark failed: {exc.reason}") from None
                tpu_status["reason"] = exc.reason
    doc["edgetpu"] = tpu_status
    if not doc["results"]:
        raise ConfigError(f"{p}: nothing to benchmark (no CPU model and no Edge TPU: {tpu_status.get('reason')})")
    return doc


def cmd_bench(args: argparse.Namespace) -> int:
    threads = parse_threads(args.threads)
    doc = run_bench(
        args.model, threads, args.warmup, args.runs, args.runtime, args.edgetpu, args.edgetpu_library, args.device
    )
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    size = human_size(doc["size_bytes"]) if doc.get("size_bytes") is not None else "?"
    inp = doc.get("input")
    shape = f", input {inp['shape']} {inp['dtype']}" if inp else ""
    print(f"{doc['model']} ({size}{shape})")
    print(f"{doc['warmup']} warm-up invokes, then {doc['runs']} timed")
    rows = []
    for r in doc["results"]:
        lat = r["latency_ms"]
        rows.append(
            (
                r["accelerator"],
                "-" if r["threads"] is None else r["threads"],
                f"{r['first_inference_ms']:.1f}",
                f"{lat['p50']:.3f}",
                f"{lat['p90']:.3f}",
                f"{lat['p99']:.3f}",
                f"{lat['mean']:.3f}",
                f"{r['throughput_per_s']:.1f}",
                r["runtime"],
            )
        )
    headers = ("device", "threads", "first ms", "p50 ms", "p90 ms", "p99 ms", "mean ms", "per s", "runtime")
    print(format_table(headers, rows, right=(False, True, True, True, True, True, True, True, False)))
    tpu = doc["edgetpu"]
    if not tpu["ran"] and tpu["mode"] != "off":
        print(f"Edge TPU: not run ({tpu.get('reason')})")
    return 0
