"""What the OpenCV-backed live sources share: one ``cv2.VideoCapture`` read by one thread.

``read()`` and ``release()`` never overlap (OpenCV captures are not thread-safe). A read
can block (a V4L2 camera, a network stream up to its timeout), so ``release()`` frees the
capture at once only when no read is under way; otherwise the reading thread frees it as
soon as its read returns.
"""

from __future__ import annotations

import threading
from typing import Any, Mapping

import cv2
import numpy as np

from ..errors import SourceError
from .base import Source
from .frames import FramePool


class CaptureSource(Source):
    live = True

    def __init__(self, name: str = "") -> None:
        super().__init__(name)
        self.cap: cv2.VideoCapture | None = None
        self._lock = threading.Lock()
        self._release_pending = False
        self._pool = FramePool()  # frames are decoded into buffers nothing downstream holds any more

    # subclasses: open the capture (raise SourceError when it does not open), and name it
    def _open_capture(self) -> cv2.VideoCapture:  # pragma: no cover - overridden
        raise NotImplementedError

    def _lost(self) -> str:  # pragma: no cover - overridden
        raise NotImplementedError

    def open(self) -> None:
        cap = self._open_capture()  # may block (a camera that does not answer): no lock held
        with self._lock:
            if self.closed:  # closed while it was opening: nobody reads it any more
                cap.release()
                return
            self.cap = cap
            self._release_pending = False

    def _grab(self) -> tuple[np.ndarray, str | None, Mapping[str, Any] | None] | None:
        with self._lock:
            if self.closed:
                self._release_locked()
                return None
            if self.cap is None:
                raise SourceError(f"{self.describe()} is not open")
            ok, image = self._pool.read(self.cap)
            if self._release_pending:
                self._release_locked()
        if not ok or image is None:
            raise SourceError(self._lost())
        if image.ndim == 2:
            image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
        return image, None, None

    def _release_locked(self) -> None:
        if self.cap is not None:
            self.cap.release()
            self.cap = None
        self._pool.clear()
        self._release_pending = False

    def release(self) -> None:
        if self._lock.acquire(blocking=False):  # no read under way: release now
            try:
                self._release_locked()
            finally:
                self._lock.release()
        else:  # the reading thread releases the capture when its read returns
            self._release_pending = True
