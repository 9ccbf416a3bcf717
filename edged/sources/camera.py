"""A local camera (USB/CSI exposed as V4L2) through OpenCV, reopened when it stops."""

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

    def __init__(self, cfg: Any, name: str = "") -> None:
        super().__init__(name)
        self.cfg = cfg
        self.cap: cv2.VideoCapture | None = None
        self.failed = False
        # read() and release() never overlap; a V4L2 read can block, so close() releases the
        # camera only when no read is under way, and otherwise the reader does it afterwards
        self._lock = threading.Lock()

    def describe(self) -> str:
        c = self.cfg
        size = f" {c.width}x{c.height}" if c.width and c.height else ""
        return f"camera {c.device}{size}"

    def _open_capture(self) -> cv2.VideoCapture:
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
        return cap

    def open(self) -> None:
        self.cap = self._open_capture()

    def _grab(self) -> tuple[np.ndarray, str | None, Any] | None:
        while not self.closed:
            with self._lock:
                got = self._read_once()
            if got is not None:
                return got
            if self._closed.wait(self.cfg.reopen_seconds):
                break
            with self._lock:
                if not self.closed:
                    try:
                        self.cap = self._open_capture()
                    except SourceError:
                        self.cap = None
        self._release()
        return None

    def _read_once(self) -> tuple[np.ndarray, str | None, Any] | None:
        """One read under the lock; None after a failure (the capture is then released)."""
        if self.closed or self.cap is None:
            return None
        ok, image = self.cap.read()
        if ok and image is not None:
            if self.failed:
                log.info("stream %s: camera %s is delivering frames again", self.name, self.cfg.device)
                self.failed = False
            if image.ndim == 2:
                image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
            return image, None, None
        self.cap.release()
        self.cap = None
        if not self.failed and not self.closed:
            log.warning(
                "stream %s: camera %s stopped delivering frames; reopening every %gs",
                self.name,
                self.cfg.device,
                self.cfg.reopen_seconds,
            )
            self.failed = True
        return None

    def _release(self) -> None:
        with self._lock:
            if self.cap is not None:
                self.cap.release()
                self.cap = None

    def close(self) -> None:
        super().close()
        if self._lock.acquire(blocking=False):  # no read under way: release now
            try:
                if self.cap is not None:
                    self.cap.release()
                    self.cap = None
            finally:
                self._lock.release()
        # else the reading thread releases the camera when its read returns
