"""edged's whole pipeline against the bare ``invoke()`` limit and the naive loop, in one run.

    python bench/pipeline.py [--seconds 15] [--threads 2] [--model SSD.tflite] [--rounds 3] [--json]

On the same model (default the 300x300 uint8 SSD of ../shared/testdata) and thread count:

(a) the limit: ``interpreter.invoke()`` in a loop on a pre-filled input;
(b) the naive loop a tutorial writes, one thread: take a 1280x720 frame, ``cv2.resize``,
    ``cvtColor``, ``rgb / 255.0`` then ``x / scale + zero_point`` per pixel in float,
    ``astype``, ``set_tensor``, ``invoke``, ``get_tensor`` of every output, dequantise, filter;
(c) edged's :class:`edged.stream.Stream` (capture thread, latest-frame slot, inference
    thread, a recording sink) fed by a 1280x720 source defined here that hands out the
    same pre-generated frames as (b), unpaced (as fast as the capture thread takes them);
(c') the same Stream with that source paced at 30 fps, as a camera delivers frames: the
    frame latency a camera user sees (throughput is then the source's, not the model's).

Each mode runs ``--seconds`` in total, split into ``--rounds`` interleaved segments (a, b,
c, c', a, b, ...) so that all of them see the same machine state. Also: a preprocessing
micro-benchmark (edged's Preprocessor, 720p BGR into a preallocated buffer) and the
resident memory of a child process running two streams (``--rss-child``). Targets are
shown next to the measurements, never asserted. Not a test: timings depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edged.config import config_from_dict  # noqa: E402
from edged.inference.local import Engine, InProcessBackend  # noqa: E402
from edged.metrics import Metrics  # noqa: E402
from edged.model import LoadedModel, load_model, read_labels  # noqa: E402
from edged.preprocess import Preprocessor  # noqa: E402
from edged.result import Result  # noqa: E402
from edged.sinks.base import Sink  # noqa: E402
from edged.sources.base import Source  # noqa: E402
from edged.stream import Stream  # noqa: E402

WIDTH, HEIGHT = 1280, 720
SSD = "ssd_mobilenet_v1_coco_quant_postprocess.tflite"
TARGETS = {
    "c_over_a": 0.95,  # throughput of edged's pipeline / the bare invoke loop, at least
    "preprocess_ms": 1.0,  # median 720p -> 300x300 uint8, at most
    "p99_c_over_a": 2.0,  # p99 frame latency of (c) / p99 invoke of (a), at most
    "rss_mb": 250.0,  # resident memory with two streams, at most
}


# --------------------------------------------------------------------------- machine


def default_testdata() -> Path:
    return Path(os.environ.get("EDGED_TESTDATA", str(Path(__file__).resolve().parents[2] / "shared" / "testdata")))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def proc_status_kb(key: str) -> int:
    """VmRSS / VmHWM of this process in kB (0 when /proc is missing)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def thread_ns(tid: int | None) -> tuple[int, int]:
    """(time on a CPU, time runnable but waiting for a CPU) of one thread, in ns (schedstat)."""
    if tid is None:
        return 0, 0
    try:
        run, wait, _ = Path(f"/proc/self/task/{tid}/schedstat").read_text().split()
        return int(run), int(wait)
    except (OSError, ValueError):
        return 0, 0


def process_cpu() -> float:
    t = os.times()
    return t.user + t.system


def system_busy() -> float:
    """CPU seconds all processes used so far, steal included (from /proc/stat), for the load of others."""
    try:
        f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    except (OSError, ValueError):
        return float("nan")
    user, nice, system, _idle, _iowait, irq, softirq, steal = f
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- input


def make_frames(testdata: Path, n: int = 30) -> list[np.ndarray]:
    """``n`` varied 1280x720 BGR frames: cat_720p.jpg shifted, flipped, brightened (noise if missing)."""
    path = testdata / "images" / "cat_720p.jpg"
    base = cv2.imread(str(path)) if path.is_file() else None
    if base is None:
        base = np.random.default_rng(0).integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    base = cv2.resize(base, (WIDTH, HEIGHT))
    frames = []
    for i in range(n):
        dx, dy = (i * 53) % 241 - 120, (i * 29) % 121 - 60
        m = np.float32([[1, 0, dx], [0, 1, dy]])
        img = cv2.warpAffine(base, m, (WIDTH, HEIGHT), borderMode=cv2.BORDER_REFLECT)
        if i % 2:
            img = cv2.flip(img, 1)
        img = cv2.convertScaleAbs(img, alpha=0.8 + 0.1 * (i % 5), beta=0)
        frames.append(np.ascontiguousarray(img))
    return frames


class PoolSource(Source):
    """A 1280x720 source handing out pre-generated frames in a cycle; unpaced (``_fps`` None).

    With ``fps`` it is paced like a camera (edged then reads it continuously, newest frame
    wins); without, edged reads it on demand, when inference wants the next frame."""

    kind = "bench-pool"

    def __init__(self, frames: list[np.ndarray], name: str = "", fps: float | None = None) -> None:
        super().__init__(name)
        self.frames = frames
        self.fps = fps
        self._i = 0

    def open(self) -> None:
        if not self.frames:
            raise ValueError("no frames")

    def describe(self) -> str:
        h, w = self.frames[0].shape[:2]
        return f"bench pool of {len(self.frames)} {w}x{h} frames, " + (f"{self.fps:g} fps" if self.fps else "unpaced")

    def _fps(self) -> float | None:
        return self.fps

    def _grab(self) -> tuple[np.ndarray, str | None, Any] | None:
        image = self.frames[self._i % len(self.frames)]
        self._i += 1
        return image, None, None


class RecordingSink(Sink):
    """Records (publish time, total, queue, preprocess, inference, postprocess) of every result."""

    name = "bench"

    def __init__(self, keep: bool = True) -> None:
        self.keep = keep
        self.count = 0
        self.records: list[tuple[float, float, float, float, float, float]] = []

    def publish(self, result: Result) -> None:
        self.count += 1
        if self.keep:
            lat = result.latency_ms
            self.records.append(
                (
                    time.monotonic(),
                    lat["total"],
                    lat.get("queue", 0.0),
                    lat.get("preprocess", 0.0),
                    lat.get("inference", 0.0),
                    lat.get("postprocess", 0.0),
                )
            )


def stream_config(model: Path, threads: int, labels: Path | None, sid: str = "bench") -> Any:
    m: dict[str, Any] = {"path": str(model), "threads": threads}
    if labels is not None and labels.is_file():
        m["labels"] = str(labels)
    return {
        "id": sid,
        # replaced by a PoolSource before start(); edged's own source is only the fallback
        "source": {"type": "synthetic", "width": WIDTH, "height": HEIGHT, "fps": 30},
        "model": m,
        "sinks": [],
    }


# --------------------------------------------------------------------------- statistics


def pct(values: list[float] | np.ndarray, q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if len(values) else float("nan")


def summary(ms: list[float]) -> dict[str, float]:
    return {"n": len(ms), "p50_ms": pct(ms, 50), "p99_ms": pct(ms, 99), "mean_ms": float(np.mean(ms)) if ms else 0.0}


# --------------------------------------------------------------------------- the three modes


def run_limit(interp: Any, seconds: float, warmup: float) -> dict[str, Any]:
    """(a) bare invoke() on whatever the input tensor holds."""
    invoke = interp.invoke
    end = time.monotonic() + warmup
    while time.monotonic() < end:
        invoke()
    lat: list[float] = []
    cpu0, sys0, t0 = process_cpu(), system_busy(), time.monotonic()
    end = t0 + seconds
    pc = time.perf_counter
    while True:
        s = pc()
        invoke()
        lat.append(pc() - s)
        if time.monotonic() >= end:
            break
    wall = time.monotonic() - t0
    cpu, busy = process_cpu() - cpu0, system_busy() - sys0
    return {"frames": len(lat), "wall": wall, "cpu": cpu, "sys_busy": busy, "lat_ms": [x * 1e3 for x in lat]}


class Naive:
    """(b) the tutorial's loop, one step after the other in one thread."""

    def __init__(self, loaded: LoadedModel, labels: dict[int, str] | None, threshold: float = 0.5) -> None:
        self.interp = loaded.interpreter
        self.info = loaded.info
        self.labels = labels or {}
        self.threshold = threshold
        spec = self.info.input
        _, self.h, self.w, _ = spec.shape
        self.index = spec.index
        self.dtype = spec.dtype
        self.scale, self.zp = spec.quantization.scale, spec.quantization.zero_point

    def step(self, frame: np.ndarray) -> list[Any]:
        interp = self.interp
        fh, fw = frame.shape[:2]
        rgb = cv2.cvtColor(cv2.resize(frame, (self.w, self.h)), cv2.COLOR_BGR2RGB)
        x = rgb.astype(np.float32) / 255.0  # the float input a tutorial computes
        if self.dtype != "float32":  # ... then quantises it per pixel (as bench/stages.py naive)
            lim = np.iinfo(self.dtype)
            x = np.clip(np.round(x / self.scale + self.zp), lim.min, lim.max).astype(self.dtype)
        interp.set_tensor(self.index, x[None])
        interp.invoke()
        outs = [interp.get_tensor(o.index) for o in self.info.outputs]
        deq = {
            o.index: (v.astype(np.float32) - o.quantization.zero_point) * (o.quantization.scale or 1.0)
            for v, o in zip(outs, self.info.outputs)
        }
        if self.info.task == "classification":
            scores = deq[self.info.outputs[0].index].reshape(-1)
            return [(int(i), float(scores[i])) for i in np.argsort(-scores)[:3]]
        r = self.info.ssd_outputs or {}
        boxes, classes, scores = deq[r["boxes"]][0], deq[r["classes"]][0], deq[r["scores"]][0]
        found = []
        for i in range(int(deq[r["count"]].reshape(-1)[0])):
            if scores[i] >= self.threshold:
                y0, x0, y1, x1 = boxes[i]
                cid = int(classes[i])
                found.append((self.labels.get(cid, str(cid)), float(scores[i]), x0 * fw, y0 * fh, x1 * fw, y1 * fh))
        return found


def run_naive(naive: Naive, frames: list[np.ndarray], seconds: float, warmup: float) -> dict[str, Any]:
    n = len(frames)
    i = 0
    end = time.monotonic() + warmup
    while time.monotonic() < end:
        naive.step(frames[i % n])
        i += 1
    lat: list[float] = []
    cpu0, sys0, t0 = process_cpu(), system_busy(), time.monotonic()
    end = t0 + seconds
    pc = time.perf_counter
    while True:
        s = pc()
        frame = frames[i % n]  # "take a frame from the source"
        i += 1
        naive.step(frame)
        lat.append(pc() - s)
        if time.monotonic() >= end:
            break
    wall = time.monotonic() - t0
    cpu, busy = process_cpu() - cpu0, system_busy() - sys0
    return {"frames": len(lat), "wall": wall, "cpu": cpu, "sys_busy": busy, "lat_ms": [x * 1e3 for x in lat]}


def build_stream(cfg: Any, engine: Engine, source: Source, sink: Sink) -> Stream:
    """edged's Stream, given the bench's source and sink (a Stream is given its parts)."""
    return Stream(cfg, engine, source, [sink], Metrics().stream(cfg.id))


def thread_ids(stream: Stream) -> dict[str, int | None]:
    out: dict[str, int | None] = {"capture": None, "infer": None}
    for t in getattr(stream, "_threads", []):
        role = t.name.rsplit("-", 1)[-1]
        if role in out:
            out[role] = t.native_id
    return out


def run_stream(
    cfg: Any, loaded: LoadedModel, frames: list[np.ndarray], seconds: float, warmup: float, fps: float | None
) -> dict[str, Any]:
    """(c) edged's Stream on the shared interpreter, fed by the PoolSource."""
    engine = Engine(cfg.model, InProcessBackend(loaded))
    source = PoolSource(frames, cfg.id, fps=fps)
    sink = RecordingSink()
    stream = build_stream(cfg, engine, source, sink)
    stream.start()
    try:
        time.sleep(warmup)
        tids = thread_ids(stream)
        ns0 = {k: thread_ns(v) for k, v in tids.items()}
        seq0, drop0 = source.frames_read, stream.metrics.dropped
        cpu0, sys0, t0 = process_cpu(), system_busy(), time.monotonic()
        time.sleep(seconds)
        t1 = time.monotonic()
        ns1 = {k: thread_ns(v) for k, v in tids.items()}
        seq1, drop1, cpu1, sys1 = source.frames_read, stream.metrics.dropped, process_cpu(), system_busy()
    finally:
        stream.close(timeout=3.0)
    alive = [t.name for t in getattr(stream, "_threads", []) if t.is_alive()]
    if alive:
        raise SystemExit(f"stream threads still running after close(): {alive}; the interpreter is shared, stopping")
    if stream.state == "failed":
        raise SystemExit(f"stream failed: {stream.last_error}")
    recs = [r for r in sink.records if t0 <= r[0] <= t1]
    wall = t1 - t0
    times = [r[0] for r in recs]
    gaps = np.diff(times) * 1e3 if len(times) > 1 else np.array([])
    return {
        "frames": len(recs),
        "wall": wall,
        "cpu": cpu1 - cpu0,
        "sys_busy": sys1 - sys0,
        "lat_ms": [r[1] for r in recs],
        "queue_ms": [r[2] for r in recs],
        "pre_ms": [r[3] for r in recs],
        "inf_ms": [r[4] for r in recs],
        "post_ms": [r[5] for r in recs],
        "gap_ms": gaps.tolist(),
        "captured": seq1 - seq0,
        "dropped": drop1 - drop0,
        "thread_run_s": {k: (ns1[k][0] - ns0[k][0]) / 1e9 for k in tids},
        "thread_wait_s": {k: (ns1[k][1] - ns0[k][1]) / 1e9 for k in tids},
    }


def merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for p in parts:
        for k, v in p.items():
            if isinstance(v, list):
                out.setdefault(k, []).extend(v)
            elif isinstance(v, dict):
                d = out.setdefault(k, {})
                for kk, vv in v.items():
                    d[kk] = d.get(kk, 0.0) + vv
            else:
                out[k] = out.get(k, 0) + v
    return out


def digest(raw: dict[str, Any]) -> dict[str, Any]:
    wall = raw["wall"]
    d: dict[str, Any] = {
        "fps": raw["frames"] / wall,
        "frames": raw["frames"],
        "seconds": wall,
        "cpu_cores": raw["cpu"] / wall,
        # CPU that other processes took meanwhile (cores): how noisy the machine was
        "others_cores": max(0.0, (raw["sys_busy"] - raw["cpu"]) / wall),
        "latency": summary(raw["lat_ms"]),
    }
    if "pre_ms" in raw:
        stages = {k: summary(raw[f"{k}_ms"]) for k in ("queue", "pre", "inf", "post", "gap")}
        busy = sum(stages[k]["mean_ms"] * stages[k]["n"] for k in ("pre", "inf", "post")) / 1e3
        d.update(
            {
                "stages": stages,
                "captured_per_s": raw["captured"] / wall,
                "dropped_share": raw["dropped"] / raw["captured"] if raw["captured"] else 0.0,
                # share of wall time the inference thread spent in preprocess+inference+postprocess
                "infer_thread_busy": busy / wall,
                "thread_cpu": {k: v / wall for k, v in raw["thread_run_s"].items()},
                "thread_runqueue": {k: v / wall for k, v in raw["thread_wait_s"].items()},
            }
        )
    return d


# --------------------------------------------------------------------------- preprocessing


def bench_preprocess(frames: list[np.ndarray], iterations: int) -> dict[str, Any]:
    cases = {
        "720p -> 300x300 uint8 (identity LUT)": Preprocessor(300, 300, 3, "uint8", 0.0078125, 128),
        "720p -> 224x224 int8 (LUT)": Preprocessor(224, 224, 3, "int8", 1 / 255, -128),
    }
    out: dict[str, Any] = {}
    n = len(frames)
    for name, pre in cases.items():
        buf = np.empty((1, pre.height, pre.width, 3), np.dtype(pre.dtype))
        for i in range(50):
            pre(frames[i % n], buf[0])
        lat = []
        pc = time.perf_counter
        for i in range(iterations):
            f = frames[i % n]
            s = pc()
            pre(f, buf[0])
            lat.append((pc() - s) * 1e3)
        out[name] = {"median_ms": pct(lat, 50), "p99_ms": pct(lat, 99), "identity": bool(pre.identity)}
    # for context: the naive float preprocessing of (b), 720p -> 300x300
    lat = []
    for i in range(iterations // 4):
        f = frames[i % n]
        s = time.perf_counter()
        x = cv2.cvtColor(cv2.resize(f, (300, 300)), cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0
        np.clip(np.round(x / 0.0078125 + 128), 0, 255).astype(np.uint8)
        lat.append((time.perf_counter() - s) * 1e3)
    out["naive float, 720p -> 300x300 uint8 (context)"] = {"median_ms": pct(lat, 50), "p99_ms": pct(lat, 99)}
    return out


# --------------------------------------------------------------------------- memory (child process)


def rss_child(args: argparse.Namespace) -> None:
    """Two streams of the same model, fed at 1280x720, for ``--rss-seconds``; prints one JSON line."""
    mb = 1 / 1024
    imports = proc_status_kb("VmRSS") * mb
    frames = make_frames(Path(args.testdata)) if args.rss_source == "pool" else []
    pool_mb = sum(f.nbytes for f in frames) / 2**20
    after_frames = proc_status_kb("VmRSS") * mb
    labels = Path(args.testdata) / "models" / "coco_labels.txt"
    raw = {
        "listen": "127.0.0.1:0",
        "streams": [stream_config(Path(args.model), args.threads, labels, f"s{i}") for i in range(2)],
    }
    if args.rss_source == "synthetic":
        for s in raw["streams"]:
            s["source"] = {"type": "synthetic", "width": WIDTH, "height": HEIGHT, "fps": 30}
    cfg = config_from_dict(raw)
    sinks = [RecordingSink(keep=False) for _ in cfg.streams]
    streams = []
    for scfg, sink in zip(cfg.streams, sinks):
        if args.rss_source == "pool":
            streams.append(build_stream(scfg, None, PoolSource(frames, scfg.id), sink))
        else:  # edged's own source, built from the configuration by Stream
            st = Stream(scfg, Metrics())
            st.sinks = [*st.sinks, sink]
            streams.append(st)
    loaded_mb = proc_status_kb("VmRSS") * mb
    for st in streams:
        st.start()
    peak_sampled = 0.0
    end = time.monotonic() + args.rss_seconds
    while time.monotonic() < end:
        time.sleep(0.2)
        peak_sampled = max(peak_sampled, proc_status_kb("VmRSS") * mb)
    rss = proc_status_kb("VmRSS") * mb
    hwm = proc_status_kb("VmHWM") * mb
    for st in streams:
        st.close()
    print(
        json.dumps(
            {
                "source": args.rss_source,
                "imports_mb": imports,
                "after_frames_mb": after_frames,
                "frame_pool_mb": pool_mb,
                "models_loaded_mb": loaded_mb,
                "rss_mb": rss,
                "rss_max_sampled_mb": peak_sampled,
                "hwm_mb": hwm,
                "results_per_s": [s.count / args.rss_seconds for s in sinks],
                "states": [st.state for st in streams],
            }
        )
    )


def run_rss_child(args: argparse.Namespace, source: str) -> dict[str, Any]:
    cmd = [
        sys.executable, str(Path(__file__).resolve()), "--rss-child", "--rss-source", source,
        "--rss-seconds", str(args.rss_seconds), "--model", str(args.model), "--threads", str(args.threads),
        "--testdata", str(args.testdata),
    ]  # fmt: skip
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=args.rss_seconds + 120)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        return {"source": source, "error": (p.stderr.strip().splitlines() or [f"exit {p.returncode}"])[-1]}
    return json.loads(lines[-1])


# --------------------------------------------------------------------------- report


def fmt(x: float, nd: int = 2) -> str:
    return "–" if x != x else f"{x:.{nd}f}"


def report(res: dict[str, Any]) -> None:
    m = res["machine"]
    print(
        f"machine: {m['cores']} cores ({m['affinity']} usable), {m['cpu']}, python {m['python']}, numpy {m['numpy']}, "
        f"opencv {m['opencv']}, {m['runtime']} {m['runtime_version']}; model {m['model']}, {m['threads']} interpreter "
        f"threads; {res['seconds']:g} s per mode in {res['rounds']} interleaved rounds; "
        f"loadavg at start {m['loadavg']}, at end {m['loadavg_end']}"
    )
    md = res["modes"]
    names = {
        "a": "(a) bare invoke() loop",
        "b": "(b) naive loop, one thread",
        "c": "(c) edged Stream, unpaced 720p source",
        "c_lossless": "(c') edged Stream, the same frames paced at 30 fps (a camera)",
    }
    print("\n| mode | throughput /s | latency p50 ms | latency p99 ms | CPU: this process / others (cores) |")
    print("|---|---|---|---|---|")
    for k, label in names.items():
        if k in md:
            d = md[k]
            lat = d["latency"]
            cpu = f"{d['cpu_cores']:.2f} / {d['others_cores']:.2f}"
            print(f"| {label} | {d['fps']:.1f} | {fmt(lat['p50_ms'])} | {fmt(lat['p99_ms'])} | {cpu} |")
    r = res["ratios"]
    t = TARGETS
    pre = res["preprocess"]
    pre300 = next(v for k, v in pre.items() if k.startswith("720p -> 300x300"))
    rows = [
        ("throughput c/a", f"{r['c_over_a']:.3f}", f"≥ {t['c_over_a']}", r["c_over_a"] >= t["c_over_a"]),
        ("throughput c/b", f"{r['c_over_b']:.3f}", "–", None),
        (
            "p99(c) / p99(a)",
            f"{r['p99_c_over_a']:.2f}",
            f"≤ {t['p99_c_over_a']:g}",
            r["p99_c_over_a"] <= t["p99_c_over_a"],
        ),
        (
            "preprocess 720p→300x300 median",
            f"{pre300['median_ms']:.3f} ms",
            f"≤ {t['preprocess_ms']:g} ms",
            pre300["median_ms"] <= t["preprocess_ms"],
        ),
    ]
    if "c_lossless" in md:
        rows.append(("(camera-paced) p99(c') / p99(a)", f"{r['p99_c_lossless_over_a']:.2f}", "–", None))
    for mem in res["rss"]:
        if "error" in mem:
            rows.append((f"RSS two streams ({mem['source']} source)", f"error: {mem['error']}", "", None))
            continue
        rows.append(
            (
                f"RSS two streams, {mem['source']} source (VmRSS / VmHWM)",
                f"{mem['rss_mb']:.0f} / {mem['hwm_mb']:.0f} MB"
                + (f" (incl. {mem['frame_pool_mb']:.0f} MB frame pool)" if mem["frame_pool_mb"] else ""),
                f"≤ {t['rss_mb']:g} MB",
                mem["rss_mb"] <= t["rss_mb"],
            )
        )
    print("\n| check | measured | target | met |")
    print("|---|---|---|---|")
    for name, val, target, ok in rows:
        print(f"| {name} | {val} | {target} | {'' if ok is None else ('yes' if ok else 'no')} |")
    mems = [x for x in res["rss"] if "error" not in x]
    if mems:
        print(
            "\n| RSS of the two-stream child, MB | after imports | + frame pool | + 2 models loaded | running | VmHWM |"
        )
        print("|---|---|---|---|---|---|")
        for x in mems:
            fps = "/".join(f"{v:.0f}" for v in x["results_per_s"])
            print(
                f"| {x['source']} source ({fps} results/s per stream) | {x['imports_mb']:.0f} "
                f"| {x['after_frames_mb']:.0f} | {x['models_loaded_mb']:.0f} | {x['rss_mb']:.0f} | {x['hwm_mb']:.0f} |"
            )
    print("\n| preprocessing, 1280x720 BGR into a preallocated buffer | median ms | p99 ms |")
    print("|---|---|---|")
    for k, v in pre.items():
        print(f"| {k} | {v['median_ms']:.3f} | {v['p99_ms']:.3f} |")
    print("\n| where (c) spends its time (per frame unless said) | (c) | (c') |")
    print("|---|---|---|")
    a_inv = md["a"]["latency"]["p50_ms"]

    def col(key: str, f: Any) -> str:
        return f(md[key]) if key in md else "–"

    diag = [
        ("invoke p50 in (a), ms", lambda d: f"{a_inv:.2f}"),
        (
            "inference stage p50 / p99, ms",
            lambda d: f"{d['stages']['inf']['p50_ms']:.2f} / {d['stages']['inf']['p99_ms']:.2f}",
        ),
        ("preprocess stage p50, ms", lambda d: f"{d['stages']['pre']['p50_ms']:.2f}"),
        ("postprocess stage p50, ms", lambda d: f"{d['stages']['post']['p50_ms']:.2f}"),
        ("queue (frame waits in slot) p50, ms", lambda d: f"{d['stages']['queue']['p50_ms']:.2f}"),
        (
            "gap between results p50 / mean, ms",
            lambda d: f"{d['stages']['gap']['p50_ms']:.2f} / {d['stages']['gap']['mean_ms']:.2f}",
        ),
        (
            "mean gap − (pre+inf+post), ms",
            lambda d: (
                f"{d['stages']['gap']['mean_ms'] - sum(d['stages'][k]['mean_ms'] for k in ('pre', 'inf', 'post')):.2f}"
            ),
        ),
        ("inference thread busy (pre+inf+post / wall)", lambda d: f"{d['infer_thread_busy']:.0%}"),
        (
            "capture thread: frames grabbed /s, dropped",
            lambda d: f"{d['captured_per_s']:.0f}, {d['dropped_share']:.0%}",
        ),
        ("capture thread CPU (cores)", lambda d: f"{d['thread_cpu'].get('capture', 0):.2f}"),
        (
            "inference thread CPU (cores; invoke's own work runs on the pool)",
            lambda d: f"{d['thread_cpu'].get('infer', 0):.2f}",
        ),
        (
            "runqueue wait capture / infer (share of wall)",
            lambda d: f"{d['thread_runqueue'].get('capture', 0):.0%} / {d['thread_runqueue'].get('infer', 0):.0%}",
        ),
    ]
    for name, f in diag:
        print(f"| {name} | {col('c', f)} | {col('c_lossless', f)} |")


# --------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=15.0, help="measured seconds per mode (split over the rounds)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (a, b, c, c') the seconds are split into")
    ap.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds at the start of every segment")
    ap.add_argument("--threads", type=int, default=2, help="interpreter threads")
    ap.add_argument("--testdata", type=Path, default=default_testdata())
    ap.add_argument("--model", type=Path, default=None, help=f"model (default: {SSD} of the test data)")
    ap.add_argument("--labels", type=Path, default=None, help="labels (default: coco_labels.txt beside the SSD)")
    ap.add_argument("--frames", type=int, default=30, help="frames in the synthetic 1280x720 pool")
    ap.add_argument("--preprocess-iterations", type=int, default=1000)
    ap.add_argument("--rss-seconds", type=float, default=5.0)
    ap.add_argument("--no-rss", action="store_true", help="skip the two-stream memory child")
    ap.add_argument("--no-diagnostic", action="store_true", help="skip (c'), the camera-paced variant of (c)")
    ap.add_argument("--json", action="store_true", help="print the results as one JSON document instead")
    ap.add_argument("--rss-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--rss-source", choices=("pool", "synthetic"), default="pool", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.model is None:
        args.model = args.testdata / "models" / SSD
    if args.labels is None:
        args.labels = args.testdata / "models" / "coco_labels.txt"
    if args.rss_child:
        rss_child(args)
        return

    load = loadavg()
    frames = make_frames(args.testdata, args.frames)
    loaded = load_model(args.model, "auto", args.threads)
    labels_path = args.labels if args.labels.is_file() and loaded.info.task == "detection" else None
    labels = read_labels(labels_path) if labels_path else None
    raw = {"listen": "127.0.0.1:0", "streams": [stream_config(args.model, args.threads, labels_path)]}
    scfg = config_from_dict(raw).streams[0]
    interp = loaded.interpreter

    # (a) input pre-filled with one real frame, preprocessed by edged
    spec = loaded.info.input
    _, h, w, c = spec.shape
    pre = Preprocessor(h, w, c, spec.dtype, spec.quantization.scale, spec.quantization.zero_point)
    buf = np.empty(spec.shape, np.dtype(spec.dtype))
    pre(frames[0], buf[0])
    naive = Naive(loaded, labels, threshold=0.5)

    seg = args.seconds / max(1, args.rounds)
    parts: dict[str, list[dict[str, Any]]] = {"a": [], "b": [], "c": []}
    if not args.no_diagnostic:
        parts["c_lossless"] = []
    for _ in range(max(1, args.rounds)):
        interp.set_tensor(spec.index, buf)
        parts["a"].append(run_limit(interp, seg, args.warmup))
        parts["b"].append(run_naive(naive, frames, seg, args.warmup))
        parts["c"].append(run_stream(scfg, loaded, frames, seg, args.warmup, fps=None))
        if "c_lossless" in parts:
            parts["c_lossless"].append(run_stream(scfg, loaded, frames, seg, args.warmup, fps=30.0))
    modes = {k: digest(merge(v)) for k, v in parts.items()}
    a, b, cc = modes["a"], modes["b"], modes["c"]
    ratios = {
        "c_over_a": cc["fps"] / a["fps"],
        "c_over_b": cc["fps"] / b["fps"],
        "b_over_a": b["fps"] / a["fps"],
        "p99_c_over_a": cc["latency"]["p99_ms"] / a["latency"]["p99_ms"],
    }
    if "c_lossless" in modes:
        cl = modes["c_lossless"]
        ratios["c_lossless_over_a"] = cl["fps"] / a["fps"]
        ratios["p99_c_lossless_over_a"] = cl["latency"]["p99_ms"] / a["latency"]["p99_ms"]

    prep = bench_preprocess(frames, args.preprocess_iterations)
    rss = [] if args.no_rss else [run_rss_child(args, "pool"), run_rss_child(args, "synthetic")]
    res = {
        "machine": {
            "cores": os.cpu_count(),
            "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "cpu": cpu_model(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "opencv": cv2.__version__,
            "runtime": loaded.runtime.name,
            "runtime_version": loaded.runtime.version,
            "model": loaded.info.name,
            "threads": args.threads,
            "loadavg": load,
            "loadavg_end": loadavg(),
        },
        "seconds": args.seconds,
        "rounds": args.rounds,
        "frame_pool": {"frames": len(frames), "width": WIDTH, "height": HEIGHT},
        "targets": TARGETS,
        "modes": modes,
        "ratios": ratios,
        "preprocess": prep,
        "rss": rss,
    }
    if args.json:
        print(json.dumps(res, indent=1))
    else:
        report(res)


if __name__ == "__main__":
    threading.current_thread().name = "bench-main"
    main()
