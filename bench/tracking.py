"""What does tracking cost beside inference? ``SceneTracker.update`` against the frame's CPU inference.

    python bench/tracking.py [--rounds 3] [--frames 300] [--threads 2] [--json FILE]

The bundled detector (models/digits_detector_int8.tflite) runs on the CPU over real frames of the
demo's synthetic scene (:class:`edged.demo.scene.MultiDigitScene`, 640x480, 1 to 4 digits that
stay 15 frames then move elsewhere, so tracks start, are confirmed and end all along), and each
frame's detections go straight into a :class:`SceneTracker` with two zones (one counting two
labels only), a mask and per-label and "*" filters, at 10 frames a second of timestamps. Each
frame is timed twice, side by side in the same loop: its inference (``Engine.process``:
preparation, invoke, decoding) and its tracking (``update``). Every round runs every frame once,
with a fresh tracker; the ratio is tracking ms / inference ms.

A second line times ``update`` alone on 10 scripted objects moving across the zones (10 boxes a
frame, two labels), the load the libraries considered were measured on (docs/events.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Sequence

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edged.demo.scene import MultiDigitScene  # noqa: E402
from edged.inference import Engine  # noqa: E402
from edged.result import Box, Object  # noqa: E402
from edged.tracking import EventsConfig, MaskConfig, ObjectsConfig, SceneTracker, ZoneConfig  # noqa: E402

DETECTOR = ROOT / "models" / "digits_detector_int8.tflite"
LABELS = ROOT / "models" / "digits_labels.txt"
W, H = 640, 480


def new_scene() -> SceneTracker:
    objects = ObjectsConfig.model_validate(
        {"filters": {"1": {"min_score": 0.6, "min_area": 0.005, "max_area": 0.5}, "*": {"min_score": 0.5}}}
    )
    zones = {
        "left": ZoneConfig.model_validate({"coordinates": [[0, 0], [0.5, 0], [0.5, 1], [0, 1]]}),
        "bottom": ZoneConfig.model_validate(
            {"coordinates": [[0.1, 0.5], [0.9, 0.5], [0.9, 1.0], [0.1, 1.0]], "labels": ["3", "7"], "anchor": "center"}
        ),
    }
    masks = [MaskConfig.model_validate({"coordinates": [[0, 0], [200, 0], [200, 80], [0, 80]]})]
    return SceneTracker("bench", objects, zones, masks, EventsConfig())


def real_round(engine: Engine, frames: Sequence[np.ndarray]) -> Dict[str, Any]:
    """Every frame: its inference, then its tracking; per-frame times in ms."""
    scene = new_scene()
    infer, track, objects, events = [], [], 0, 0
    for i, frame in enumerate(frames):
        t0 = time.perf_counter()
        out = engine.process(frame)
        t1 = time.perf_counter()
        update = scene.update(out.objects or [], W, H, 1000.0 + i * 0.1)
        t2 = time.perf_counter()
        infer.append((t1 - t0) * 1e3)
        track.append((t2 - t1) * 1e3)
        objects += len(out.objects or [])
        events += len(update.events)
    return {"infer": infer, "track": track, "objects": objects / len(frames), "events": events}


def scripted(n: int = 10, frames: int = 300) -> List[List[Object]]:
    rng = np.random.default_rng(0)
    base, vel = rng.uniform(0, 500, (n, 2)), rng.uniform(-3, 3, (n, 2))
    out = []
    for i in range(frames):
        xy = base + vel * i
        out.append([Object(k % 2, str(3 + 4 * (k % 2)), 0.8, Box(x, y, x + 60, y + 60)) for k, (x, y) in enumerate(xy)])
    return out


def scripted_round(frames: Sequence[List[Object]]) -> List[float]:
    scene = new_scene()
    times = []
    for i, objs in enumerate(frames):
        t0 = time.perf_counter()
        scene.update(objs, W, H, 1000.0 + i * 0.1)
        times.append((time.perf_counter() - t0) * 1e3)
    return times[20:]  # the tracks exist: the steady state


def spread(values: Sequence[float], fmt: str = ".3f") -> str:
    return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"


def pct(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def report(rows: List[Dict[str, Any]], script: List[List[float]]) -> Dict[str, Any]:
    infer = [statistics.mean(r["infer"]) for r in rows]
    track = [statistics.mean(r["track"]) for r in rows]
    ratio = [t / i for t, i in zip(track, infer)]
    p99 = [pct(r["track"], 99) for r in rows]
    alone = [statistics.mean(s) for s in script]
    alone_p99 = [pct(s, 99) for s in script]
    print(f"  detector frames: {rows[0]['objects']:.1f} detections a frame, {rows[0]['events']} events a round")
    print(f"  inference (CPU) ms/frame:        {spread(infer)}")
    print(f"  tracking ms/frame:               {spread(track)}   p99 {spread(p99)}")
    print(f"  ratio tracking / inference:      {spread(ratio, '.4f')}")
    print(f"  tracking, 10 scripted objects:   {spread(alone)} ms/frame   p99 {spread(alone_p99)}")
    return {
        "inference_ms": infer, "tracking_ms": track, "ratio": ratio, "tracking_p99_ms": p99,
        "scripted_10_objects_ms": alone, "scripted_10_objects_p99_ms": alone_p99,
        "detections_per_frame": rows[0]["objects"],
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--frames", type=int, default=300, help="frames of the scene per round")
    ap.add_argument("--threads", type=int, default=2, help="interpreter threads")
    ap.add_argument("--json", help="write the measurements to this file")
    args = ap.parse_args()
    engine = Engine.from_file(DETECTOR, labels=str(LABELS), threshold=0.5, top_k=0, threads=args.threads)
    scene = MultiDigitScene(width=W, height=H, seed=900_002, hold_frames=15)
    frames = [scene.render(i)[0] for i in range(args.frames)]
    script = scripted()
    for f in frames[:10]:
        engine.process(f)  # warm-up
    rows: List[Dict[str, Any]] = []
    alone: List[List[float]] = []
    for r in range(args.rounds):
        rows.append(real_round(engine, frames))
        alone.append(scripted_round(script))
        infer, track = statistics.mean(rows[-1]["infer"]), statistics.mean(rows[-1]["track"])
        print(f"round {r + 1}: inference {infer:.3f} ms, tracking {track:.4f} ms, "
              f"scripted {statistics.mean(alone[-1]):.4f} ms", flush=True)  # fmt: skip
    print(f"\n{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"numpy {np.__version__}, OpenCV {cv2.__version__}, {args.rounds} rounds of {args.frames} frames; "
          "median (min-max) over rounds:")  # fmt: skip
    summary = report(rows, alone)
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
