"""What decoding a 1280x720 video costs per frame: a new array per read against a reused one.

    python bench/decode.py [--frames 150] [--rounds 3] [--hold 3] [--ffmpeg PATH]

A 1280x720 video with motion (cat_720p.jpg of ../shared/testdata sliding, a box crossing
it, a sensor's noise) is written with cv2.VideoWriter as MJPG (.avi) and MPEG-4 part 2
(mp4v), and as H.264 and HEVC at 4 Mbit/s (an IP camera's 720p stream) when an ffmpeg
executable with libx264 / libx265 is found (--ffmpeg, on PATH, or the imageio-ffmpeg
package's); the opencv-python wheels encode no H.264 themselves. Each is
decoded through OpenCV's FFmpeg backend as the sources read it:

* ``new``: ``cap.read()``, a new 2.7 MB array per frame (edged before the frame pool);
* ``reuse``: ``FramePool.read(cap)``, decoded into a buffer nothing downstream holds;

with the last ``--hold`` frames kept alive in both by another thread, as the stream keeps
them (the slot, the inference under way, ``latest_frame``). Minor page faults per frame are
counted too: fresh memory a new array touches (run with ``MALLOC_MMAP_THRESHOLD_=131072`` for
an allocator that maps every frame afresh). The two alternate in every round (order swapped each
round); the median of the rounds is printed with their spread. Then the decoder's threads
(``cv2.CAP_PROP_N_THREADS`` at open) and ``grab()`` alone (decode without the conversion to
BGR). Not a test: timings depend on the machine.
"""

from __future__ import annotations

import argparse
import collections
import os
import queue
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Optional

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edged.sources.frames import FramePool  # noqa: E402

W, H = 1280, 720


def make_frames(image: Path, n: int) -> list[np.ndarray]:
    base = cv2.resize(cv2.imread(str(image)), (W, H)) if image.is_file() else np.full((H, W, 3), 90, np.uint8)
    rng = np.random.default_rng(0)
    frames = []
    for i in range(n):
        img = np.roll(base, 6 * i, axis=1)  # the scene pans
        x = (23 * i) % (W - 200)
        cv2.rectangle(img, (x, 200), (x + 200, 400), (0, 0, 255), -1)  # and a box crosses it
        noise = rng.normal(0, 3, img.shape).astype(np.int16)  # and a sensor's noise: a camera's bitrate
        frames.append(np.clip(img.astype(np.int16) + noise, 0, 255).astype(np.uint8))
    return frames


def write(path: Path, fourcc: str, frames: list[np.ndarray]) -> bool:
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 30.0, (W, H))
    if not w.isOpened():
        return False
    for f in frames:
        w.write(f)
    w.release()
    return path.is_file() and path.stat().st_size > 0


def find_ffmpeg(arg: Optional[str]) -> Optional[str]:
    if arg:
        return arg
    if shutil.which("ffmpeg"):
        return shutil.which("ffmpeg")
    try:
        import imageio_ffmpeg  # type: ignore[import-not-found]

        return imageio_ffmpeg.get_ffmpeg_exe()
    except Exception:
        return None


def transcode(ffmpeg: str, src: Path, dst: Path, codec: str) -> bool:
    cmd = [ffmpeg, "-y", "-loglevel", "error", "-i", str(src), "-c:v", codec, "-preset", "veryfast"]
    # an IP camera's 720p stream: about 4 Mbit/s, a key frame a second
    cmd += ["-b:v", "4M", "-maxrate", "4M", "-bufsize", "8M", "-g", "30", "-pix_fmt", "yuv420p", str(dst)]
    return subprocess.run(cmd, capture_output=True).returncode == 0 and dst.is_file()


def open_video(path: Path, threads: Optional[int] = None) -> cv2.VideoCapture:
    params = [] if threads is None else [cv2.CAP_PROP_N_THREADS, threads]
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG, params)
    assert cap.isOpened(), path
    return cap


def decode(path: Path, how: str, hold: int, threads: Optional[int] = None) -> tuple[float, int, float]:
    """Seconds per frame decoding the whole file one way, the frames read, and the minor page
    faults per frame (fresh memory touched: what a new array costs beyond malloc). Each frame
    is handed to another thread that keeps the last ``hold``, as the stream's inference
    thread does: the thread that drops a frame is not the one that decoded it."""
    cap = open_video(path, threads)
    pool = FramePool()
    read: Callable[[], tuple[bool, Optional[np.ndarray]]]
    if how == "reuse":
        read = lambda: pool.read(cap)  # noqa: E731
    elif how == "grab":
        read = lambda: (cap.grab(), None)  # noqa: E731
    else:
        read = cap.read
    handoff: queue.Queue = queue.Queue(maxsize=1)
    end = object()

    def downstream() -> None:
        held: collections.deque = collections.deque(maxlen=max(hold, 1))
        while (image := handoff.get()) is not end:
            if hold:
                held.append(image)
            del image

    consumer = threading.Thread(target=downstream)
    consumer.start()
    n = 0
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t0 = time.perf_counter()
    while True:
        ok, image = read()
        if not ok:
            break
        n += 1
        handoff.put(image)
        del image
    elapsed = time.perf_counter() - t0
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
    handoff.put(end)
    consumer.join()
    cap.release()
    return elapsed / max(n, 1), n, faults / max(n, 1)


def row(name: str, per_frame: list[float], base: Optional[float], faults: list[float]) -> str:
    med = statistics.median(per_frame) * 1000
    spread = f"{min(per_frame) * 1000:.2f}–{max(per_frame) * 1000:.2f}"
    ratio = f"{base / med:.2f}x" if base else "1.00x"
    return f"| {name} | {med:.2f} | {spread} | {1000 / med:.0f} | {ratio} | {statistics.median(faults):.0f} |"


def compare(label: str, path: Path, rounds: int, hold: int) -> None:
    times: dict[str, list[float]] = {"new": [], "reuse": []}
    faults: dict[str, list[float]] = {"new": [], "reuse": []}
    n = 0
    decode(path, "new", hold)  # warm the page cache and the codec
    for r in range(rounds):
        for how in ("new", "reuse") if r % 2 == 0 else ("reuse", "new"):
            t, n, f = decode(path, how, hold)
            times[how].append(t)
            faults[how].append(f)
    size = path.stat().st_size / n / 1000
    print(f"\n{label}, {n} frames ({size:.0f} kB/frame), {hold} frames held downstream, {rounds} rounds")
    print("| read | ms/frame median | spread (min–max) | frames/s | vs new | page faults/frame |")
    print("| --- | --- | --- | --- | --- | --- |")
    base = statistics.median(times["new"]) * 1000
    print(row("new array per read (`cap.read()`)", times["new"], None, faults["new"]))
    print(row("reused buffer (`FramePool.read`)", times["reuse"], base, faults["reuse"]))


def threads(label: str, path: Path, rounds: int, hold: int) -> None:
    configs: list[tuple[str, str, Optional[int]]] = [
        ("grab() only, default threads", "grab", None),
        ("reuse, default threads", "reuse", None),
        ("reuse, N_THREADS=1", "reuse", 1),
        ("reuse, N_THREADS=2", "reuse", 2),
    ]
    if (os.cpu_count() or 1) >= 4:
        configs.append(("reuse, N_THREADS=4", "reuse", 4))
    times: dict[str, list[float]] = {c[0]: [] for c in configs}
    faults: dict[str, list[float]] = {c[0]: [] for c in configs}
    for r in range(rounds):
        for name, how, nt in configs if r % 2 == 0 else configs[::-1]:
            t, _, f = decode(path, how, hold, nt)
            times[name].append(t)
            faults[name].append(f)
    applied = {nt: open_video(path, nt).get(cv2.CAP_PROP_N_THREADS) for _, _, nt in configs}
    print(f"\n{label}: decoder threads (CAP_PROP_N_THREADS read back: {applied})")
    print("| read | ms/frame median | spread (min–max) | frames/s | vs default | page faults/frame |")
    print("| --- | --- | --- | --- | --- | --- |")
    base = statistics.median(times["reuse, default threads"]) * 1000
    for name, _, _ in configs:
        print(row(name, times[name], base, faults[name]))


def main() -> None:
    td = Path(os.environ.get("EDGED_TESTDATA", ROOT.parent / "shared" / "testdata"))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=150)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--hold", type=int, default=3, help="frames kept alive downstream, as the stream keeps them")
    ap.add_argument("--ffmpeg", help="an ffmpeg with libx264/libx265, to make the H.264 and HEVC files")
    args = ap.parse_args()
    print(f"OpenCV {cv2.__version__}, numpy {np.__version__}, {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as tmp:
        frames = make_frames(td / "images" / "cat_720p.jpg", args.frames)
        videos: list[tuple[str, Path]] = []
        mjpg = Path(tmp) / "720p.avi"
        for label, fourcc, path in (("MJPG", "MJPG", mjpg), ("MPEG-4 part 2 (mp4v)", "mp4v", Path(tmp) / "720p.mp4")):
            if write(path, fourcc, frames):
                videos.append((label, path))
        del frames
        ffmpeg = find_ffmpeg(args.ffmpeg)
        encoded = (("H.264 (libx264)", "libx264", "h264.mp4"), ("HEVC (libx265)", "libx265", "hevc.mp4"))
        for label, codec, name in encoded:
            if ffmpeg and transcode(ffmpeg, mjpg, Path(tmp) / name, codec):
                videos.append((label, Path(tmp) / name))
            else:
                print(f"({label}: no ffmpeg with {codec} found; skipped)")
        for label, path in videos:
            compare(label, path, args.rounds, args.hold)
        for label, path in videos:
            threads(label, path, args.rounds, args.hold)


if __name__ == "__main__":
    main()
