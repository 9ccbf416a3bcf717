"""Per-stage time of a frame inside the running daemon, from its own Prometheus histograms.

    python bench/daemon.py [--seconds 10] [--rounds 3] [--testdata DIR]

Runs the service in-process for a few seconds per scenario and reports, per stage, the
mean time (``_sum / _count`` of ``edged_stage_duration_seconds``), the frame rate and the
dropped share; every scenario runs once per round, the rounds interleaved, and each cell is
the median of the rounds (the spread of ``inference`` and ``track`` is printed below the table,
with their ratio). Scenarios: the embedded demo (synthetic 640x480 at 15 fps, the digits
detector, tracked), a 1280x720 MJPG video read as fast as possible through each reference
model (the SSD's frame: one cat), and the SSD on a 720p video of a beach with a dozen people
and kites seen by a still camera, tracked with two zones and a mask. A detector's ``track``
stage is tracking, zones, occupancy, events and the JPEG snapshots written when events start
and end. Not a test: timings depend on the machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edged.config import config_from_dict, default_config  # noqa: E402
from edged.daemon import Service  # noqa: E402
from edged.metrics import PIPELINE_STAGES  # noqa: E402

STAGES = PIPELINE_STAGES


ZONES = {
    "sky": {"coordinates": [[0.02, 0.02], [0.98, 0.02], [0.98, 0.5], [0.02, 0.5]]},
    "beach": {"coordinates": [[0, 0.5], [0.5, 0.5], [0.5, 1], [0, 1]], "labels": ["person"]},
}
MASKS = [{"coordinates": [[0.9, 0.9], [1, 0.9], [1, 1], [0.9, 1]]}]


def make_video(path: Path, image: Path, frames: int = 60, still: bool = False) -> None:
    """A 720p MJPG file of ``image``: mirrored every other frame (every frame differs), or
    ``still``, a fixed camera's view (shifted by a pixel or two, as a real camera's frames
    differ), whose objects stay where they are and are tracked frame after frame."""
    img = cv2.resize(cv2.imread(str(image)), (1280, 720))
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (1280, 720))
    for i in range(frames):
        w.write(np.roll(img, i % 3, axis=1) if still else cv2.flip(img, 1) if i % 2 else img)
    w.release()


def measure(cfg, seconds: float) -> list[float]:
    svc = Service(cfg, listen="127.0.0.1:0")
    svc.start()
    time.sleep(seconds)
    svc.close()
    reg = svc.metrics.registry
    sid = cfg.streams[0].id
    means = []
    for stage in STAGES:
        count = reg.get_sample_value("edged_stage_duration_seconds_count", {"stream": sid, "stage": stage}) or 0
        total = reg.get_sample_value("edged_stage_duration_seconds_sum", {"stream": sid, "stage": stage}) or 0
        means.append(total / count * 1e3 if count else float("nan"))
    processed = reg.get_sample_value("edged_frames_total", {"stream": sid, "outcome": "processed"}) or 0
    dropped = reg.get_sample_value("edged_frames_total", {"stream": sid, "outcome": "dropped"}) or 0
    lat_n = reg.get_sample_value("edged_frame_latency_seconds_count", {"stream": sid}) or 1
    lat = (reg.get_sample_value("edged_frame_latency_seconds_sum", {"stream": sid}) or 0) / lat_n * 1e3
    share = dropped / (processed + dropped) if processed + dropped else 0.0
    return [*means, lat, processed / seconds, share]


def video_config(video: Path, td: Path, model: str, labels: str, out: Path, **scene: object):
    stream = {
        "id": "bench",
        "source": {"type": "video", "path": str(video), "realtime": False, "loop": True},
        "model": {"path": str(td / "models" / f"{model}.tflite"), "labels": str(td / "models" / labels)},
        "sinks": [{"type": "jsonl", "path": str(out)}],
        **scene,
    }
    return config_from_dict({"streams": [stream]})


def report(name: str, rows: list[list[float]]) -> None:
    cols = list(zip(*rows))
    med = [statistics.median(c) for c in cols]
    cells = [f"{m:.2f}" for m in med[: len(STAGES) + 1]] + [f"{med[-2]:.1f}", f"{med[-1]:.0%}"]
    print(f"| {name} | " + " | ".join(cells) + " |")


def spread(name: str, rows: list[list[float]]) -> None:
    inf, track = STAGES.index("inference"), STAGES.index("track")
    ratio = [r[track] / r[inf] for r in rows if r[inf] > 0 and r[track] == r[track]]
    if not ratio:
        return
    print(
        f"{name}: inference {fmt([r[inf] for r in rows])} ms, track {fmt([r[track] for r in rows])} ms, "
        f"track / inference {fmt(ratio, 3)}"
    )


def fmt(xs: list[float], digits: int = 2) -> str:
    return f"{statistics.median(xs):.{digits}f} ({min(xs):.{digits}f}-{max(xs):.{digits}f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rounds", type=int, default=3)
    default_td = os.environ.get("EDGED_TESTDATA", str(Path(__file__).resolve().parents[2] / "shared" / "testdata"))
    ap.add_argument("--testdata", default=default_td)
    args = ap.parse_args()
    td = Path(args.testdata)
    print(
        f"{os.cpu_count()} cores, {args.seconds:g} s per scenario, {args.rounds} rounds interleaved; "
        "median of the rounds' mean ms per stage, from the daemon's histograms\n"
    )
    print("| scenario | " + " | ".join(STAGES) + " | frame latency | fps | dropped |")
    print("|---" * (len(STAGES) + 4) + "|")
    with tempfile.TemporaryDirectory() as tmp:
        cat, beach = Path(tmp) / "cat720p.avi", Path(tmp) / "beach720p.avi"
        make_video(cat, td / "images" / "cat_720p.jpg")
        make_video(beach, td / "images" / "kite_and_cold.jpg", still=True)
        out = Path(tmp) / "r.jsonl"
        demo = default_config()
        src, model = demo.streams[0].source, Path(demo.streams[0].model.path).stem
        ssd = ("ssd_mobilenet_v1_coco_quant_postprocess", "coco_labels.txt")
        scenarios = {
            f"the embedded demo: synthetic {src.width}x{src.height} at {src.fps:g} fps, {model}": demo,
            "720p MJPG video, unpaced, mobilenet_v2_1.0_224_quant": video_config(
                cat, td, "mobilenet_v2_1.0_224_quant", "imagenet_labels.txt", out
            ),
            f"720p MJPG video, unpaced, {ssd[0]} (a cat)": video_config(cat, td, *ssd, out),
            f"720p MJPG beach video, unpaced, {ssd[0]}, 2 zones and a mask": video_config(
                beach, td, *ssd, out, zones=ZONES, masks=MASKS
            ),
        }
        rows: dict[str, list[list[float]]] = {name: [] for name in scenarios}
        for _ in range(args.rounds):
            for name, cfg in scenarios.items():
                rows[name].append(measure(cfg, args.seconds))
        for name, r in rows.items():
            report(name, r)
        print()
        for name, r in rows.items():
            spread(name, r)


if __name__ == "__main__":
    main()
