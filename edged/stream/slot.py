"""The latest-frame slot between a stream's capture and inference threads."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Optional

from ..inference import Prepared
from ..sources import Frame


@dataclass(frozen=True)
class ReadyFrame:
    """A captured frame, prepared for the model by the capture thread."""

    frame: Frame
    prepared: Prepared
    ready: float  # time.monotonic() when it was ready for inference


class LatestSlot:
    """Holds at most one frame; ``put`` replaces, ``take`` waits. Never a queue.

    A source that costs nothing to wait on (a file read as fast as possible) waits for the
    slot to be free (``wait_free``) before reading the next frame: it reads one frame ahead
    of inference, instead of spinning and dropping frames it decoded for nothing.
    """

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._frame: Optional[ReadyFrame] = None
        self._ended = False

    def put(self, frame: ReadyFrame) -> Optional[ReadyFrame]:
        """Store ``frame``; returns the frame it replaced, which nobody took (a dropped frame)."""
        with self._cv:
            replaced = self._frame
            self._frame = frame
            self._cv.notify_all()
            return replaced

    def take(self, timeout: float) -> Optional[ReadyFrame]:
        with self._cv:
            if self._frame is None and not self._ended:
                self._cv.wait(timeout)
            frame, self._frame = self._frame, None
            if frame is not None:
                self._cv.notify_all()  # the slot is free again
            return frame

    def wait_free(self, timeout: float) -> bool:
        """Wait until the slot is empty (True), or it ended / time ran out (False)."""
        with self._cv:
            if self._frame is not None and not self._ended:
                self._cv.wait(timeout)
            return self._frame is None and not self._ended

    def end(self) -> None:
        with self._cv:
            self._ended = True
            self._cv.notify_all()

    @property
    def ended(self) -> bool:
        with self._cv:
            return self._ended and self._frame is None
