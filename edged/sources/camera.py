"""A local camera (USB/CSI exposed as V4L2) through OpenCV, reopened when it stops."""

from __future__ import annotations

import logging
import sys
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
            if self.cap is not None:
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
                if not self.failed:
                    log.warning(
                        "stream %s: camera %s stopped delivering frames; reopening every %gs",
                        self.name,
                        self.cfg.device,
                        self.cfg.reopen_seconds,
                    )
                    self.failed = True
            if self._closed.wait(self.cfg.reopen_seconds):
                return None
            try:
                self.cap = self._open_capture()
            except SourceError:
                self.cap = None
        return None

    def close(self) -> None:
        super().close()
        if self.cap is not None:
            self.cap.release()
