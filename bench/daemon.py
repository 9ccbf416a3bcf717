"""Per-stage time of a frame inside the running daemon, from its own Prometheus histograms.

    python bench/daemon.py [--seconds 10] [--testdata DIR]

Runs the service in-process for a few seconds per scenario and reports, per stage, the
mean time (``_sum / _count`` of ``edged_stage_duration_seconds``), the frame rate and the
dropped share. Scenarios: the embedded demo (synthetic 640x480 at 15 fps, the digits detector),
and a 1280x720 MJPG video read as fast as possible through each reference model.
Not a test: timings depend on the machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import cv2

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edged.config import config_from_dict, default_config  # noqa: E402
from edged.daemon import Service  # noqa: E402
from edged.metrics import PIPELINE_STAGES  # noqa: E402

STAGES = PIPELINE_STAGES


def make_video(path: Path, image: Path, frames: int = 60) -> None:
    img = cv2.resize(cv2.imread(str(image)), (1280, 720))
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (1280, 720))
    for i in range(frames):
        w.write(cv2.flip(img, 1) if i % 2 else img)
    w.release()


def measure(name: str, cfg, seconds: float) -> None:
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
    print(
        f"| {name} | "
        + " | ".join(f"{m:.2f}" for m in means)
        + f" | {lat:.2f} | {processed / seconds:.1f} | {share:.0%} |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    default_td = os.environ.get("EDGED_TESTDATA", str(Path(__file__).resolve().parents[2] / "shared" / "testdata"))
    ap.add_argument("--testdata", default=default_td)
    args = ap.parse_args()
    td = Path(args.testdata)
    print(f"{os.cpu_count()} cores, {args.seconds:g} s per scenario; mean ms per stage from the daemon's histograms\n")
    print("| scenario | " + " | ".join(STAGES) + " | frame latency | fps | dropped |")
    print("|---" * (len(STAGES) + 4) + "|")
    demo = default_config()
    src, model = demo.streams[0].source, Path(demo.streams[0].model.path).stem
    measure(f"the embedded demo: synthetic {src.width}x{src.height} at {src.fps:g} fps, {model}", demo, args.seconds)
    with tempfile.TemporaryDirectory() as tmp:
        video = Path(tmp) / "cat720p.avi"
        make_video(video, td / "images" / "cat_720p.jpg")
        for model, labels in (
            ("mobilenet_v2_1.0_224_quant", "imagenet_labels.txt"),
            ("ssd_mobilenet_v1_coco_quant_postprocess", "coco_labels.txt"),
        ):
            cfg = config_from_dict(
                {
                    "streams": [
                        {
                            "id": "bench",
                            "source": {"type": "video", "path": str(video), "realtime": False, "loop": True},
                            "model": {
                                "path": str(td / "models" / f"{model}.tflite"),
                                "labels": str(td / "models" / labels),
                            },
                            "sinks": [{"type": "jsonl", "path": str(Path(tmp) / "r.jsonl")}],
                        }
                    ]
                }
            )
            measure(f"720p MJPG video, unpaced, {model}", cfg, args.seconds)


if __name__ == "__main__":
    main()
