"""How much of the time is the Edge TPU busy? edged's whole daemon path against the TPU's limit.

    python bench/accelerator.py [--seconds 6] [--rounds 3] [--frames 240] [--json FILE]

No Edge TPU here: the TPU is emulated at the worker's invoke (:mod:`edged.emulation`): the
stand-in delegate (tests/fake_edgetpu) loads in edged's real worker process, and each invoke
there sleeps Coral's published time (USB 3: SSD MobileNet v1 6.5 ms, MobileNet v2 2.6 ms),
leaving the CPU free as a TPU does, and writes the outputs a real CPU inference of that very
input produced beforehand. Everything else is edged's daemon as a board runs it: ``python -m
edged run`` on a real MJPEG video file (decoded by OpenCV, unpaced, looped), preprocessing,
the worker's shared memory and pipe, decoding of the outputs, a real sink (JSON lines to a
file), metrics.

Side by side, interleaved in ``--rounds`` rounds (every scenario once per round, in turn):

* the limit: the emulated invoke in a bare loop (its sleep's precision included);
* the daemon with 1, 2 and 4 streams on one TPU and 4 streams on two TPUs (a fake apex
  sysfs tree with two devices), for both profiles; throughput / limit (the limit of n TPUs
  is n / invoke time);
* a camera-paced stream (the video at 30 fps, SSD): frame latency, from the start of the
  frame's capture to its result being published, and from the frame in hand (after its
  decoding) to published;
* CPU inference, SSD with 2 interpreter threads: the daemon on the video against a bare
  ``invoke()`` loop of the same model and threads.

Resident memory (parent + worker, VmRSS) is read from /proc for the two-stream SSD case.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from support import fake_edgetpu  # noqa: E402

from edged import emulation  # noqa: E402
from edged.config import ModelConfig  # noqa: E402
from edged.inference import Engine  # noqa: E402

PROFILES = {  # Coral's published invoke times, USB 3 (coral.ai/docs/edgetpu/benchmarks)
    "ssd": ("ssd_mobilenet_v1_coco_quant_postprocess.tflite", 0.0065),
    "mnv2": ("mobilenet_v2_1.0_224_quant.tflite", 0.0026),
}
CPU_LIMIT = "cpu ssd: bare invoke loop, 2 threads"
LAYOUTS = [("1 stream", 1, 1), ("2 streams, 1 TPU", 2, 1), ("4 streams, 1 TPU", 4, 1), ("4 streams, 2 TPUs", 4, 2)]


def make_video(path: Path, image: np.ndarray, frames: int, size: tuple[int, int], fps: float = 30.0) -> None:
    """A real MJPEG file: the photograph panned a few pixels a frame (so every frame differs)."""
    w, h = size
    base = cv2.resize(image, (w + frames, h))
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    for i in range(frames):
        out.write(np.ascontiguousarray(base[:, i : i + w]))
    out.release()


def decoded(path: Path) -> list[np.ndarray]:
    cap, frames = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG), []
    while True:
        ok, frame = cap.read()
        if not ok:
            return frames
        frames.append(frame)


def bare_emulated(recording: Path, seconds: float) -> float:
    """The limit: emulated invokes back to back, per second."""
    emu = emulation.EmulatedInvoke(recording, recording.parent / "misses-bare.log")
    key = next(iter(emu.table))
    data = np.zeros(1, np.uint8)
    emu.table[emulation.digest(data)] = emu.table[key]
    outputs = [(None, np.empty_like(v)) for v in emu.table[key]]
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        emu.invoke(None, data, outputs)
        n += 1
    return n / (time.perf_counter() - t0)


def bare_cpu(model: Path, threads: int, seconds: float) -> float:
    """The CPU limit: ``invoke()`` in a loop, in a process of its own (as the daemon is)."""
    code = (
        "import sys, time; sys.path.insert(0, sys.argv[1]); from edged.model import load_model\n"
        "m = load_model(sys.argv[2], 'auto', int(sys.argv[3])); i = m.interpreter; i.invoke()\n"
        "n, t0 = 0, time.perf_counter()\n"
        "while time.perf_counter() - t0 < float(sys.argv[4]): i.invoke(); n += 1\n"
        "print(n / (time.perf_counter() - t0))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(ROOT), str(model), str(threads), str(seconds)],
                         capture_output=True, text=True, check=True)  # fmt: skip
    return float(out.stdout.strip())


def rss_mb(pid: int) -> float:
    """VmRSS of a process and its descendants but multiprocessing's resource tracker (a helper
    process of 12 MB, not edged's), MB."""
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            status = Path(f"/proc/{p}/status").read_text()
            if "resource_tracker" not in Path(f"/proc/{p}/cmdline").read_text():
                total += next(int(x.split()[1]) for x in status.splitlines() if x.startswith("VmRSS")) / 1024
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, StopIteration):
            pass
    return total


def invokes(env: dict[str, str]) -> dict[str, tuple[int, float]]:
    """Each emulated TPU's invokes so far and the seconds they took (its worker's invokes files, one
    per model: summed per worker process)."""
    folder = env.get(emulation.ENV)
    out: dict[str, tuple[int, float]] = {}
    for f in Path(folder).glob("invokes-*.txt") if folder else []:
        pid = f.name.split("-")[1]
        try:
            n, busy = f.read_text().split()
        except (OSError, ValueError):  # replaced under us: the totals of the last half second are lost
            continue
        had = out.get(pid, (0, 0.0))
        out[pid] = (had[0] + int(n), had[1] + float(busy))
    return out


def daemon(work: Path, lib: Path, streams: list[dict[str, Any]], env: dict[str, str], seconds: float) -> dict:
    """``edged run`` on ``streams`` for a warm-up then ``seconds``: results/s and latencies from the sinks."""
    for i, s in enumerate(streams):
        s["sinks"] = [{"type": "jsonl", "path": str(work / f"out-{i}.jsonl")}]
        (work / f"out-{i}.jsonl").unlink(missing_ok=True)
    cfg = {"listen": "127.0.0.1:0", "edgetpu": {"library": str(lib), "deadline_seconds": 2.0}, "streams": streams}
    (work / "edged.json").write_text(json.dumps(cfg))
    argv = [sys.executable, "-m", "edged", "run", "--config", str(work / "edged.json"), "--log-level", "warning"]
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    files = [work / f"out-{i}.jsonl" for i in range(len(streams))]
    try:
        until = time.monotonic() + 60
        while not all(f.exists() and f.stat().st_size > 0 for f in files):
            if proc.poll() is not None or time.monotonic() > until:
                raise SystemExit(f"edged did not start: {proc.stderr.read() if proc.stderr else ''}")
            time.sleep(0.1)
        time.sleep(1.5)  # warm-up
        start, before = [len(f.read_bytes().splitlines()) for f in files], invokes(env)
        t0 = time.monotonic()
        time.sleep(seconds)
        lines, after = [f.read_bytes().splitlines()[n:] for f, n in zip(files, start)], invokes(env)
        wall = time.monotonic() - t0
        memory = rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(10)
    results = [json.loads(line) for part in lines for line in part]
    # how busy each emulated TPU was (its invokes files are rewritten twice a second: about right over a window)
    deltas = [(after[k][0] - before.get(k, (0, 0.0))[0], after[k][1] - before.get(k, (0, 0.0))[1]) for k in after]
    deltas = [d for d in deltas if d[0] > 0]
    total = [r["latency_ms"]["total"] for r in results]
    in_hand = [r["latency_ms"]["total"] - r["latency_ms"]["capture"] for r in results]
    return {
        "fps": len(results) / wall,
        "on_tpu": sum(r["accelerator"] == "edgetpu" for r in results) / max(1, len(results)),
        "latency_p50_ms": statistics.median(total) if total else None,
        "in_hand_p50_ms": statistics.median(in_hand) if in_hand else None,
        "rss_mb": memory,
        "tpu_busy": statistics.mean(b / wall for _, b in deltas) if deltas else None,
        "invoke_ms": 1e3 * sum(b for _, b in deltas) / sum(n for n, _ in deltas) if deltas else None,
    }


def stream(sid: str, video: Path, model: Path, accelerator: str, realtime: bool = False) -> dict[str, Any]:
    return {
        "id": sid,
        "source": {"type": "video", "path": str(video), "loop": True, "realtime": realtime},
        "model": {"path": str(model), "accelerator": accelerator, "threads": 2},
    }


def sysfs(work: Path, tpus: int) -> dict[str, str]:
    """A fake apex sysfs and /dev tree with ``tpus`` PCIe Edge TPUs (0: none, one default worker)."""
    root = work / f"tpus-{tpus}"
    for n in range(tpus):
        (root / "sys" / "class" / "apex" / f"apex_{n}").mkdir(parents=True, exist_ok=True)
        (root / "dev").mkdir(parents=True, exist_ok=True)
        (root / "dev" / f"apex_{n}").write_text("")
    (root / "sys").mkdir(parents=True, exist_ok=True)
    (root / "dev").mkdir(parents=True, exist_ok=True)
    return {"EDGED_SYSFS_ROOT": str(root / "sys"), "EDGED_DEV_ROOT": str(root / "dev")}


def prepare(work: Path, td: Path, frames: int) -> dict[str, Any]:
    """The stand-in delegate, the videos, the plain models and their recordings (outputs of a real
    CPU inference of each decoded frame, prepared as the daemon prepares it)."""
    lib = fake_edgetpu.build(work)
    image = cv2.imread(str(td / "images" / "cat_720p.jpg"))
    videos = {"720p": work / "pan_720p.avi", "360p": work / "pan_360p.avi"}
    make_video(videos["720p"], image, frames, (1280, 720))
    make_video(videos["360p"], image, frames, (640, 360))
    rec = work / "recordings"
    rec.mkdir()
    models = {}
    for name, (file, seconds) in PROFILES.items():
        models[name] = work / file
        shutil.copy(td / "models" / file, models[name])
        engine = Engine.load(ModelConfig(path=str(models[name]), threads=2))
        images = decoded(videos["720p"]) + decoded(videos["360p"])
        n = emulation.record(engine, images, rec / f"{models[name].stem}.npz", seconds)
        print(f"recorded {n} inputs of {file} ({seconds * 1e3:g} ms per invoke)", flush=True)
    return {"lib": lib, "videos": videos, "models": models, "recordings": rec}


def scenarios(p: dict[str, Any]) -> list[tuple[str, Any]]:
    """(name, a function of the window's seconds returning the measurement), in the order run."""
    emulated = {**os.environ, emulation.ENV: str(p["recordings"])}

    def on_daemon(streams: list[dict[str, Any]], env: dict[str, str]) -> Any:
        return lambda s: daemon(p["work"], p["lib"], streams, env, s)

    out: list[tuple[str, Any]] = []
    for name in PROFILES:
        model, rec = p["models"][name], p["recordings"] / f"{p['models'][name].stem}.npz"
        out.append((f"{name}: limit", lambda s, rec=rec: {"fps": bare_emulated(rec, min(s, 3.0))}))
        for size in ["720p", "360p"] if name == "mnv2" else ["720p"]:
            for label, n, tpus in LAYOUTS:
                streams = [stream(f"s{i}", p["videos"][size], model, "edgetpu") for i in range(n)]
                env = {**emulated, **sysfs(p["work"], tpus if tpus > 1 else 0)}
                out.append((f"{name}: {size}, {label}", on_daemon(streams, env)))
    ssd, video = p["models"]["ssd"], p["videos"]["720p"]
    paced = [stream("cam", video, ssd, "edgetpu", realtime=True)]
    out.append(("ssd: 720p at 30 fps (camera-paced)", on_daemon(paced, {**emulated, **sysfs(p["work"], 0)})))
    out.append((CPU_LIMIT, lambda s: {"fps": bare_cpu(ssd, 2, s)}))
    out.append(
        ("cpu ssd: daemon, 720p video, 2 threads", on_daemon([stream("cpu", video, ssd, "cpu")], dict(os.environ)))
    )
    return out


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def report(rows: dict[str, list[dict]], rounds: int) -> dict[str, Any]:
    """Each scenario against its limit, round by round (the limit of that round), median and spread."""
    summary: dict[str, Any] = {}
    for name, runs in rows.items():
        profile = name.split(":")[0]
        limit_name = "cpu ssd: bare invoke loop, 2 threads" if profile == "cpu ssd" else f"{profile}: limit"
        tpus = 2 if "2 TPUs" in name else 1
        ratios = (
            [r["fps"] / (tpus * lim["fps"]) for r, lim in zip(runs, rows[limit_name])] if name != limit_name else []
        )
        fps = [r["fps"] for r in runs]
        line = f"{name:44s} {spread(fps):>26s} /s"
        if ratios:
            line += f"   / limit {spread(ratios)}"
        busy = [r["tpu_busy"] for r in runs if r.get("tpu_busy") is not None]
        if busy:
            invoke = [r["invoke_ms"] for r in runs]
            line += f"   TPU busy {spread(busy)}, invoke {spread(invoke)} ms"
        lat = [r["latency_p50_ms"] for r in runs if r.get("latency_p50_ms") is not None]
        if lat and "paced" in name:
            hand = [r["in_hand_p50_ms"] for r in runs]
            line += f"   latency p50 {spread(lat)} ms, from the frame in hand {spread(hand)} ms"
        on_tpu = [r["on_tpu"] for r in runs if "on_tpu" in r and "edgetpu" not in name]
        if on_tpu and min(on_tpu) < 1.0 and not name.startswith("cpu"):
            line += f"   (only {min(on_tpu):.1%} on the TPU!)"
        if "2 streams, 1 TPU" in name and profile == "ssd":
            line += f"   memory {spread([r['rss_mb'] for r in runs])} MB"
        print(line)
        summary[name] = {"runs": runs, "ratio_median": statistics.median(ratios) if ratios else None}
    return summary


def main() -> None:
    td = Path(os.environ.get("EDGED_TESTDATA", ROOT.parent / "shared" / "testdata"))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=6.0, help="measured window per scenario and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--frames", type=int, default=240, help="frames of each video (looped)")
    ap.add_argument("--only", help="run only the scenarios whose name contains this")
    ap.add_argument("--json", help="write the measurements to this file")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        p = prepare(Path(tmp), td, args.frames)
        p["work"] = Path(tmp)
        todo = [
            (n, f) for n, f in scenarios(p) if not args.only or args.only in n or n.endswith("limit") or "bare" in n
        ]
        rows: dict[str, list[dict]] = {n: [] for n, _ in todo}
        for r in range(args.rounds):
            for name, measure in todo:
                rows[name].append(measure(args.seconds))
                print(f"round {r + 1}: {name}: {rows[name][-1]['fps']:.1f}/s", flush=True)
            misses = p["recordings"] / "misses.log"
            if misses.exists():
                print(f"  {len(misses.read_text().splitlines())} inputs were not recorded (run on the CPU)")
        print(f"\n{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
              f"OpenCV {cv2.__version__}, {args.rounds} rounds of {args.seconds:g} s; median (min-max):")  # fmt: skip
        summary = report(rows, args.rounds)
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
