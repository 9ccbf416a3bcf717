"""An Edge TPU's time profile, emulated in the worker process: for benchmarks and tests only.

This machine has no Edge TPU, and on a Coral the question that matters is how much of the
time the TPU waits for the host. With ``EDGED_EMULATE_EDGETPU`` naming a folder of
recordings, the Edge TPU worker's child does not run the interpreter: each invoke takes the
recorded time per invoke (sleeping, so the CPU is free, as it is while a TPU works) and
writes the outputs recorded for that very input — those of a real CPU inference made
beforehand, outside the timed region (:func:`record`). An input with no recording (a frame
the benchmark did not record) is run on the CPU for real, then the remaining time is slept,
and a line is appended to ``misses.log`` in the folder (not for the worker's start-up test
inference), so a benchmark can say how many. Each worker also keeps ``invokes-<pid>-<n>.txt``
there (a model's invokes and the seconds they took, rewritten twice a second): how busy
the emulated TPU really was.

A recording is ``<model file stem>.npz``: ``invoke_seconds`` (a scalar), ``digests`` (one
CRC-32 per input, uint32) and ``out<i>`` (the outputs of those inputs, stacked, in output
order). The daemon warns at start when the variable is set: its results are then replayed,
not computed.
"""

from __future__ import annotations

import itertools
import os
import time
import zlib
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

ENV = "EDGED_EMULATE_EDGETPU"
_instances = itertools.count()  # the models emulated in this process


def folder() -> Optional[Path]:
    """The recordings folder when emulation is on, else None."""
    value = os.environ.get(ENV)
    return Path(value) if value else None


def digest(data: np.ndarray) -> int:
    """The key of an input: the CRC-32 of its bytes (about 0.1 ms for 300x300x3 here)."""
    return zlib.crc32(np.ascontiguousarray(data))


class Recorder:
    """Collects a model's outputs for each distinct input, then saves them with a time profile."""

    def __init__(self) -> None:
        self.digests: list[int] = []
        self.outputs: list[list[np.ndarray]] = []
        self._seen: set[int] = set()

    def add(self, data: np.ndarray, outputs: Sequence[np.ndarray]) -> None:
        d = digest(data)
        if d not in self._seen:
            self._seen.add(d)
            self.digests.append(d)
            self.outputs.append([np.array(o, copy=True) for o in outputs])

    def save(self, path: Path, invoke_seconds: float) -> None:
        arrays: dict[str, Any] = {
            "invoke_seconds": np.float64(invoke_seconds),
            "digests": np.asarray(self.digests, np.uint32),
        }
        for i in range(len(self.outputs[0]) if self.outputs else 0):
            arrays[f"out{i}"] = np.stack([o[i] for o in self.outputs])
        np.savez(path, **arrays)


class EmulatedInvoke:
    """The invoke of one model in the worker's child, replaced by its recording."""

    def __init__(self, recording: Path, misses: Path) -> None:
        with np.load(recording) as z:
            self.seconds = float(z["invoke_seconds"])
            digests = z["digests"]
            outs = [z[f"out{i}"] for i in range(sum(1 for k in z.files if k.startswith("out")))]
        self.table = {int(d): [o[j] for o in outs] for j, d in enumerate(digests)}
        self.misses = misses
        self._late = 0.0  # how late a sleep wakes up on average: slept that much less (at most 10 %)
        # invokes and busy seconds of this model in this worker, for benchmarks
        self._stats = misses.parent / f"invokes-{os.getpid()}-{next(_instances)}.txt"
        self.count, self.busy, self._written = 0, 0.0, 0.0

    def invoke(self, interp: Any, data: np.ndarray, outputs: list[tuple[Any, np.ndarray]], test: bool = False) -> float:
        """Take the profile's time, write the recorded outputs into the output views; the seconds
        taken. ``test``: the worker's start-up test inference, whose miss is not written down."""
        t0 = time.perf_counter()
        recorded = self.table.get(digest(data))
        if recorded is None:  # not recorded: the real outputs, on the CPU
            interp.invoke()
            for tensor, view in outputs:
                np.copyto(view, tensor())
            if not test:
                with open(self.misses, "a") as f:
                    f.write(f"{os.getpid()} {digest(data)}\n")
        else:
            for (_, view), values in zip(outputs, recorded):
                np.copyto(view, values)
        until = t0 + self.seconds
        left = until - time.perf_counter() - self._late
        if left > 0:
            time.sleep(left)
        late = time.perf_counter() - until  # negative when this sleep woke up early enough
        self._late = min(max(0.0, self._late + 0.1 * late), 0.1 * self.seconds)
        return self._count(time.perf_counter() - t0)

    def _count(self, seconds: float) -> float:
        """Keep the totals; written to ``invokes-<pid>-<n>.txt`` twice a second (``count busy_seconds``)."""
        self.count += 1
        self.busy += seconds
        now = time.monotonic()
        if now - self._written >= 0.5:
            self._written = now
            part = self._stats.with_suffix(".part")
            part.write_text(f"{self.count} {self.busy:.6f}\n")
            os.replace(part, self._stats)  # a reader never sees it half written
        return seconds


def for_model(path: str) -> Optional[EmulatedInvoke]:
    """The emulated invoke of the model at ``path`` when emulation is on and it has a recording."""
    where = folder()
    if where is None:
        return None
    recording = where / f"{Path(path).stem}.npz"
    if not recording.is_file():
        return None
    return EmulatedInvoke(recording, where / "misses.log")


def record(engine: Any, images: Sequence[np.ndarray], path: Path, invoke_seconds: float) -> int:
    """Record an in-process ``engine``'s outputs for each image, prepared as a stream prepares it,
    and save them with the profile's time per invoke; the number of distinct inputs recorded."""
    preparer, recorder = engine.preparer(), Recorder()
    spec = engine.info.input
    buf = np.empty(spec.shape[1:], np.dtype(spec.dtype))
    order = [t.index for t in engine.info.outputs]
    for image in images:
        prepared = preparer.prepare(image, buf)
        call = engine.backend.start(lambda view, data=prepared.data: np.copyto(view, data))
        outputs, _ = call.wait()
        recorder.add(prepared.data, [outputs[i] for i in order])
        call.release()
    recorder.save(path, invoke_seconds)
    return len(recorder.digests)
