"""What class-aware NMS costs: OpenCV's cv2.dnn.NMSBoxesBatched (``nms_opencv``, the daemon's)
against the vectorised numpy reference (``nms``).

    python bench/nms.py [--rounds 7] [--repeat 20]

Candidate sets as a YOLO head gives them after the threshold: 100, 2000 and 8400 boxes
(8400: every anchor of a 640x640 export), 80 classes, scores with ties, crowded so that
NMS suppresses; the same 8400 over 5 classes (more same-class overlaps); and 8400 boxes of 3
classes piled on a 60x60 corner, of which only 132 survive (every chunk of ``nms_opencv``). NMS keeps at
most 300 (``max_detections``). Each round times both functions on every set, in turn, the
order swapped each round; the time of a call is the median of ``--repeat`` calls. Printed: the
median over the rounds with the min-max spread, and the ratio numpy / OpenCV per round
(median, spread). Both give the same indices (checked once per set). Not a test: timings
depend on the machine.

Then the whole decode of a 640x640 int8 export's output ``[1, 84, 8400]`` (``detect_yolo``:
threshold, dequantise, boxes, NMS, back to the frame) at a threshold every anchor passes,
with either NMS inside, alternated the same way.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edged import postprocess  # noqa: E402
from edged.postprocess import nms, nms_opencv  # noqa: E402
from edged.preprocess import compute_transform  # noqa: E402

Nms = Callable[[np.ndarray, np.ndarray, np.ndarray, float, int], np.ndarray]
# boxes, classes, side of the square the box corners fall in (None: as crowded whatever the count)
SETS = [(100, 80, None), (2000, 80, None), (8400, 80, None), (8400, 5, None), (8400, 3, 60)]
MAX_KEEP = 300


def candidates(n: int, classes: int, side: int | None, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 8 * np.sqrt(n) if side is None else side, (n, 2))
    wh = rng.uniform(4, 120, (n, 2)) if side is None else rng.uniform(30, 90, (n, 2))
    scores = rng.uniform(0.25, 1.0, n).round(2).astype(np.float32)
    return np.concatenate([xy, xy + wh], axis=1), scores, rng.integers(0, classes, n)


def timed(fn: Nms, args: tuple[np.ndarray, np.ndarray, np.ndarray], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(*args, 0.45, MAX_KEEP)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def spread(values: list[float], fmt: str = "{:.3f}") -> str:
    return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def head_output(seed: int = 1) -> np.ndarray:
    """A 640x640 head's raw int8 output, scale 1/255 and zero point -128: boxes normalised, 80 classes."""
    rng = np.random.default_rng(seed)
    real = np.empty((84, 8400), np.float32)
    real[0:2] = rng.uniform(0, 1, (2, 8400))
    real[2:4] = rng.uniform(0.01, 0.2, (2, 8400))
    real[4:] = rng.uniform(0, 1, (80, 8400)) ** 4
    return (np.round(real * 255) - 128).clip(-128, 127).astype(np.int8)[None]


def decode_rounds(rounds: int, repeat: int) -> dict[str, list[float]]:
    """ms per ``detect_yolo`` call, per round, with OpenCV's NMS and with the numpy one."""
    out = head_output()
    transform = compute_transform(1280, 720, 640, 640, "letterbox")
    options = postprocess.YoloOptions(threshold=0.05, max_detections=300)
    ms: dict[str, list[float]] = {"numpy": [], "opencv": []}
    for r in range(rounds):
        for name in ("numpy", "opencv") if r % 2 == 0 else ("opencv", "numpy"):
            postprocess.nms_opencv = nms if name == "numpy" else nms_opencv  # type: ignore[assignment]
            times = []
            for _ in range(repeat):
                t0 = time.perf_counter()
                postprocess.detect_yolo(out, transform, 640, 640, scale=1 / 255, zero_point=-128, options=options)
                times.append(time.perf_counter() - t0)
            ms[name].append(statistics.median(times) * 1000)
    postprocess.nms_opencv = nms_opencv
    return ms


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args(argv)
    data = {s: candidates(*s, seed=i) for i, s in enumerate(SETS)}
    kept = {}
    for s, d in data.items():
        a, b = nms(*d, 0.45, MAX_KEEP), nms_opencv(*d, 0.45, MAX_KEEP)
        if a.tolist() != b.tolist():
            print(f"{s}: the two disagree", file=sys.stderr)
            return 1
        kept[s] = a.size
    fns: list[tuple[str, Nms]] = [("numpy", nms), ("opencv", nms_opencv)]
    ms: dict[tuple[tuple[int, int, int | None], str], list[float]] = {(s, n): [] for s in SETS for n, _ in fns}
    for r in range(args.rounds):
        for name, fn in fns if r % 2 == 0 else fns[::-1]:
            for s in SETS:
                ms[(s, name)].append(timed(fn, data[s], args.repeat) * 1000)
    print(f"{args.rounds} rounds, median of {args.repeat} calls each; ms: median (min-max)")
    print("| boxes | classes | spread over | kept | numpy, ms | OpenCV, ms | numpy / OpenCV |")
    print("|---|---|---|---|---|---|---|")
    for s in SETS:
        ratios = [a / b for a, b in zip(ms[(s, "numpy")], ms[(s, "opencv")])]
        print(
            f"| {s[0]} | {s[1]} | {s[2] or round(8 * s[0] ** 0.5)} px | {kept[s]} "
            f"| {spread(ms[(s, 'numpy')])} | {spread(ms[(s, 'opencv')])} | {spread(ratios, '{:.2f}')} |"
        )
    dec = decode_rounds(args.rounds, args.repeat)
    ratios = [a / b for a, b in zip(dec["numpy"], dec["opencv"])]
    print()
    print("| detect_yolo, [1, 84, 8400] int8, all anchors pass | numpy NMS, ms | OpenCV NMS, ms | numpy / OpenCV |")
    print("|---|---|---|---|")
    print(f"| 300 kept | {spread(dec['numpy'])} | {spread(dec['opencv'])} | {spread(ratios, '{:.2f}')} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
