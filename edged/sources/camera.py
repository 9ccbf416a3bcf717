"""A local camera (USB/CSI exposed as V4L2) through OpenCV.

A camera that stops delivering raises SourceError; the stream releases it and opens it
again with backoff (see :mod:`edged.pipeline`).
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any

import cv2
import numpy as np

from ..errors import SourceError
from .base import Source

log = logging.getLogger(__name__)


class CameraSource(Source):
    kind = "camera"
    live = True

    def __init__(self, cfg: Any, name: str = "") -> None:
        super().__init__(name)
        self.cfg = cfg
        self.cap: cv2.VideoCapture | None = None
        # read() and release() never overlap; a V4L2 read can block, so release() frees the
        # camera only when no read is under way, and otherwise the reader does it afterwards
        self._lock = threading.Lock()
        self._release_pending = False

    def describe(self) -> str:
        c = self.cfg
        size = f" {c.width}x{c.height}" if c.width and c.height else ""
        return f"camera {c.device}{size}"

    def open(self) -> None:
        c = self.cfg
        device: int | str = c.device
        if isinstance(device, str) and device.isdigit():
            device = int(device)
        backend = cv2.CAP_V4L2 if sys.platform.startswith("linux") else cv2.CAP_ANY
        cap = cv2.VideoCapture(device, backend)
        if not cap.isOpened():
            cap.release()
            raise SourceError(
                f"cannot open camera {c.device}: no such device, or it is busy or not readable "
                "(is the user in the 'video' group?)"
            )
        if c.fourcc:
            cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*c.fourcc))
        if c.width:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, c.width)
        if c.height:
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, c.height)
        if c.fps:
            cap.set(cv2.CAP_PROP_FPS, c.fps)
        with self._lock:
            self.cap = cap
            self._release_pending = False

    def _grab(self) -> tuple[np.ndarray, str | None, Any] | None:
        with self._lock:
            if self.closed:
                self._release_locked()
                return None
            if self.cap is None:
                raise SourceError(f"camera {self.cfg.device} is not open")
            ok, image = self.cap.read()
            if self._release_pending:
                self._release_locked()
        if not ok or image is None:
            raise SourceError(f"camera {self.cfg.device} stopped delivering frames")
        if image.ndim == 2:
            image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
        return image, None, None

    def _release_locked(self) -> None:
        if self.cap is not None:
            self.cap.release()
            self.cap = None
        self._release_pending = False

    def release(self) -> None:
        if self._lock.acquire(blocking=False):  # no read under way: release now
            try:
                self._release_locked()
            finally:
                self._lock.release()
        else:  # the reading thread releases the camera when its read returns
            self._release_pending = True
