"""A local camera (USB/CSI exposed as V4L2) through OpenCV.

A camera that stops delivering raises SourceError; the stream releases it and opens it
again with backoff (see :mod:`edged.stream`).
"""

from __future__ import annotations

import sys
from typing import Literal, Optional, Union

import cv2
from pydantic import Field

from ..errors import SourceError
from ..registry import SOURCES
from .base import LiveSourceConfig
from .capture import CaptureSource


class CameraSourceConfig(LiveSourceConfig):
    """A local camera through OpenCV (V4L2 on Linux)."""

    type: Literal["camera"] = "camera"
    device: Union[int, str] = Field(0, description="camera index (0) or device path (/dev/video0)")
    width: Optional[int] = Field(None, ge=1, description="requested frame width")
    height: Optional[int] = Field(None, ge=1, description="requested frame height")
    fps: Optional[float] = Field(None, gt=0, description="requested frame rate")
    fourcc: Optional[str] = Field(None, min_length=4, max_length=4, description="pixel format, e.g. MJPG or YUYV")


class CameraSource(CaptureSource):
    kind = "camera"

    def __init__(self, cfg: CameraSourceConfig, name: str = "") -> None:
        super().__init__(name)
        self.cfg = cfg

    def describe(self) -> str:
        c = self.cfg
        size = f" {c.width}x{c.height}" if c.width and c.height else ""
        return f"camera {c.device}{size}"

    def _lost(self) -> str:
        return f"camera {self.cfg.device} stopped delivering frames"

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


SOURCES.register("camera", CameraSourceConfig, CameraSource)
