"""What watching costs: the daemon's frame rate with and without clients of the HTTP API.

    python bench/api.py [--seconds 8] [--rounds 3] [--testdata DIR]

One stream (the SSD on a 1280x720 MJPG video read as fast as possible, so any time the
HTTP side takes shows as frames lost) runs in-process. Rounds alternate two scenarios in
one run: (a) nobody watching; (b) two live pages' worth of clients: two event-stream
readers, the snapshot fetched twice a second and the status every second. Reports the
frames per second of each round and the ratio b/a. Not a test: timings depend on the machine.
"""

from __future__ import annotations

import argparse
import http.client
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from daemon import make_video  # noqa: E402

from edged.config import config_from_dict  # noqa: E402
from edged.daemon import Service  # noqa: E402


def watchers(base: str, stop: threading.Event, counts: dict[str, int]) -> list[threading.Thread]:
    host, port = base.split("//")[1].split(":")

    def events() -> None:
        c = http.client.HTTPConnection(host, int(port), timeout=5)
        c.request("GET", "/api/v1/events")
        r = c.getresponse()
        while not stop.is_set():
            counts["event_bytes"] += len(r.read1(65536))
        c.close()

    def poll(path: str, every: float, key: str) -> None:
        while not stop.wait(every):
            with urllib.request.urlopen(base + path, timeout=5) as r:
                counts[key] += len(r.read()) > 0

    threads = [threading.Thread(target=events) for _ in range(2)]
    threads.append(threading.Thread(target=poll, args=("/api/v1/streams/bench/snapshot.jpg", 0.5, "snapshots")))
    threads.append(threading.Thread(target=poll, args=("/api/v1/status", 1.0, "status")))
    return threads


def round_fps(svc: Service, seconds: float, watched: bool) -> tuple[float, dict[str, int]]:
    reg = svc.metrics.registry
    stop = threading.Event()
    counts = {"event_bytes": 0, "snapshots": 0, "status": 0}
    threads = watchers(f"http://{svc.address}", stop, counts) if watched else []
    for t in threads:
        t.start()
    time.sleep(1.0)  # clients connected, warm
    n0 = reg.get_sample_value("edged_frames_total", {"stream": "bench", "outcome": "processed"}) or 0
    t0 = time.monotonic()
    time.sleep(seconds)
    n1 = reg.get_sample_value("edged_frames_total", {"stream": "bench", "outcome": "processed"}) or 0
    fps = (n1 - n0) / (time.monotonic() - t0)
    stop.set()
    for t in threads:
        t.join(10)
    return fps, counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--rounds", type=int, default=3)
    default_td = os.environ.get("EDGED_TESTDATA", str(Path(__file__).resolve().parents[2] / "shared" / "testdata"))
    ap.add_argument("--testdata", default=default_td)
    args = ap.parse_args()
    td = Path(args.testdata)
    with tempfile.TemporaryDirectory() as tmp:
        video = Path(tmp) / "cat720p.avi"
        make_video(video, td / "images" / "cat_720p.jpg")
        cfg = config_from_dict(
            {
                "streams": [
                    {
                        "id": "bench",
                        "source": {"type": "video", "path": str(video), "realtime": False, "loop": True},
                        "model": {
                            "path": str(td / "models/ssd_mobilenet_v1_coco_quant_postprocess.tflite"),
                            "labels": str(td / "models/coco_labels.txt"),
                        },
                        "sinks": [],
                    }
                ]
            }
        )
        svc = Service(cfg, listen="127.0.0.1:0")
        svc.start()
        try:
            time.sleep(2.0)  # warm-up
            a, b = [], []
            print(f"{os.cpu_count()} cores; SSD on 720p video, unpaced; {args.seconds:g} s per round\n")
            print("| round | (a) unwatched, fps | (b) two pages, fps | b/a | in (b): events, snapshots, status |")
            print("|---|---|---|---|---|")
            for i in range(args.rounds):
                fa, _ = round_fps(svc, args.seconds, False)
                fb, counts = round_fps(svc, args.seconds, True)
                a.append(fa)
                b.append(fb)
                print(
                    f"| {i + 1} | {fa:.1f} | {fb:.1f} | {fb / fa:.3f} | "
                    f"{counts['event_bytes'] // 1024} KiB, {counts['snapshots']}, {counts['status']} |"
                )
            print(
                f"| median | {statistics.median(a):.1f} | {statistics.median(b):.1f} | "
                f"{statistics.median(b) / statistics.median(a):.3f} | |"
            )
        finally:
            svc.close()


if __name__ == "__main__":
    main()
