"""A video file read through OpenCV's FFmpeg backend, looped and paced at its own rate."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Literal, Mapping, Optional

import cv2
import numpy as np
from pydantic import Field

from ..errors import SourceError
from ..registry import SOURCES, StrictConfig
from .base import Source
from .frames import FramePool


class VideoSourceConfig(StrictConfig):
    """A video file, read with OpenCV (FFmpeg)."""

    type: Literal["video"] = "video"
    path: str = Field(description="video file (mp4, avi, mkv, ...)")
    loop: bool = Field(True, description="start again at the end instead of ending the stream")
    realtime: bool = Field(True, description="pace at the file's own frame rate (false: as fast as possible)")
    fps: Optional[float] = Field(None, gt=0, description="override the frame rate used for pacing")


class VideoFileSource(Source):
    kind = "video"

    def __init__(self, cfg: VideoSourceConfig, name: str = "") -> None:
        super().__init__(name)
        self.cfg = cfg
        self.path = Path(cfg.path)
        self.cap: cv2.VideoCapture | None = None
        self.fps: float | None = None
        self._lock = threading.Lock()  # read() and release() never overlap
        self._pool = FramePool()  # frames are decoded into buffers nothing downstream holds any more

    def open(self) -> None:
        cap = self._open_file()
        file_fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
        self.fps = self.cfg.fps or (file_fps if 0 < file_fps < 1000 else 25.0)
        self.cap = cap

    def _open_file(self) -> cv2.VideoCapture:
        """The file opened at its first frame; SourceError when it cannot be (missing, truncated...)."""
        if not self.path.is_file():
            raise SourceError(f"video file not found: {self.path}")
        cap = cv2.VideoCapture(str(self.path), cv2.CAP_FFMPEG)
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"cannot open video file {self.path}: not a video OpenCV/FFmpeg can read")
        ok, _ = cap.read()
        if not ok:
            cap.release()
            raise SourceError(f"video file {self.path} has no readable frame")
        cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
        return cap

    @property
    def finite(self) -> bool:
        return not self.cfg.loop

    def describe(self) -> str:
        pace = f"{self.fps:g} fps" if self.cfg.realtime else "as fast as possible"
        return f"video {self.path.name} ({pace}{', looped' if self.cfg.loop else ''})"

    def _fps(self) -> float | None:
        return self.fps if self.cfg.realtime else None

    def _grab(self) -> tuple[np.ndarray, str | None, Mapping[str, Any] | None] | None:
        with self._lock:
            if self.closed:
                return None
            if self.cap is None:
                if not self.cfg.loop or self.fps is None:  # released, or never opened
                    return None
                self.cap = self._open_file()  # looped, after a failure: SourceError until it reads again
            return self._read()

    def _read(self) -> tuple[np.ndarray, str | None, Mapping[str, Any] | None] | None:
        assert self.cap is not None, "open() first"
        ok, image = self._pool.read(self.cap)
        if not ok and self.cfg.loop:
            self.cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, image = self._pool.read(self.cap)
            if not ok:  # some containers do not seek; or the file was truncated or is being rewritten
                self.cap.release()
                self.cap = None
                self.cap = self._open_file()
                ok, image = self._pool.read(self.cap)
        if not ok:
            if not self.cfg.loop:
                return None
            raise SourceError(f"video file {self.path} cannot be read (truncated, or being rewritten?)")
        return image, None, None

    def release(self) -> None:
        with self._lock:
            if self.cap is not None:
                self.cap.release()
                self.cap = None
            self._pool.clear()


SOURCES.register("video", VideoSourceConfig, VideoFileSource)
