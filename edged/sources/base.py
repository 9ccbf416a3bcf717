"""The source protocol: ``open()``, then ``read()`` frames until it returns None, ``close()``."""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
from pydantic import Field

from ..registry import StrictConfig


@dataclass
class Frame:
    image: np.ndarray  # BGR uint8 [H, W, 3]
    seq: int  # per-source sequence number, from 0
    timestamp: float  # wall clock when capture started (Unix seconds)
    monotonic: float  # time.monotonic() when capture started
    capture_seconds: float  # time spent grabbing and decoding this frame
    origin: str | None = None  # e.g. the file an image came from
    # what the source knows about the frame beyond its pixels, carried into the result as is
    # (the demo's synthetic source: {"truth": what it drew}); the core never looks inside
    annotations: Mapping[str, Any] | None = None


class LiveSourceConfig(StrictConfig):
    """What every live source (camera, network stream) shares: how it comes back."""

    reconnect_min_seconds: float = Field(0.5, gt=0, le=3600, description="first wait before reconnecting")
    reconnect_max_seconds: float = Field(30.0, gt=0, le=3600, description="the wait doubles up to this (with jitter)")


def redact(url: str) -> str:
    """``rtsp://user:secret@cam/live`` -> ``rtsp://***@cam/live``: credentials are never logged."""
    return re.sub(r"(?<=://)[^/@\s]*@", "***@", url)


class Source:
    """Base class: pacing helpers and an interruptible wait. Subclasses implement
    ``open`` and ``_grab`` (return ``(image, origin, annotations)`` or None at the end).

    A *live* source (camera, network stream) raises :class:`~edged.errors.SourceError`
    when it loses its device or connection; the stream then calls ``release()`` and
    ``open()`` again with backoff. A finite source (file, images) ends by returning None.
    """

    kind = "source"
    live = False

    def __init__(self, name: str = "") -> None:
        self.name = name
        self._closed = threading.Event()
        self._seq = 0
        self._next_due: float | None = None

    # -- lifecycle
    def open(self) -> None:  # pragma: no cover - overridden
        pass

    def release(self) -> None:
        """Drop the device or connection; ``open()`` may be called again."""

    def close(self) -> None:
        """Final: no more frames; releases what the source holds."""
        self._closed.set()
        self.release()

    def __enter__(self) -> Source:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def describe(self) -> str:
        return self.kind

    @property
    def finite(self) -> bool:
        """Whether the source ends by configuration (``loop: false``); a live one never does."""
        return not self.live

    def end_error(self) -> str | None:
        """Once ``read()`` returned None: why the end is a failure (frames it could not read), or None."""
        return None

    # -- reading
    def _grab(self) -> tuple[np.ndarray, str | None, Mapping[str, Any] | None] | None:  # pragma: no cover - overridden
        raise NotImplementedError

    def _pace(self, fps: float | None) -> bool:
        """Sleep until the next frame is due at ``fps``; False when closed meanwhile."""
        if not fps:
            return not self.closed
        now = time.monotonic()
        due = self._next_due if self._next_due is not None else now
        if due > now and self._closed.wait(due - now):
            return False
        # never try to catch up on a backlog: the next frame is due one period from now at most
        self._next_due = max(due, time.monotonic() - 1.0 / fps) + 1.0 / fps
        return not self.closed

    def _fps(self) -> float | None:
        """The pace a subclass reads at (None: as fast as it can, or as the device delivers)."""
        return None

    @property
    def paced(self) -> bool:
        """Whether the source waits between two frames of its own accord (a frame rate)."""
        return self._fps() is not None

    @property
    def frames_read(self) -> int:
        """Frames read since the source was built."""
        return self._seq

    def read(self) -> Frame | None:
        """The next frame, or None when the source has ended (or was closed)."""
        if not self._pace(self._fps()):
            return None
        wall, t0 = time.time(), time.monotonic()
        got = self._grab()
        if got is None:
            return None
        image, origin, annotations = got
        frame = Frame(image, self._seq, wall, t0, time.monotonic() - t0, origin, annotations)
        self._seq += 1
        return frame
