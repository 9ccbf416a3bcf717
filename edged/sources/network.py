"""Network cameras: RTSP, HTTP(S) and MJPEG URLs through OpenCV's FFmpeg backend.

The transport (RTSP over TCP or UDP) and the open and read timeouts are passed to
FFmpeg: a camera that goes away makes a read fail within ``read_timeout_seconds`` instead
of blocking for minutes, and the stream reconnects with backoff. Credentials in the URL
are used but never logged (:func:`~edged.sources.base.redact`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Literal, Mapping

import cv2
import numpy as np
from pydantic import Field, field_validator

from ..errors import SourceError
from ..registry import SOURCES
from .base import LiveSourceConfig, Source, redact
from .capture import CaptureSource
from .probe import preflight, why_not_open

log = logging.getLogger(__name__)
ENV = "OPENCV_FFMPEG_CAPTURE_OPTIONS"
# OpenCV reads OPENCV_FFMPEG_CAPTURE_OPTIONS first thing in an open, before it connects; an
# open that needs another value than the one set waits this long for an open that began
# with it to have read it. Opens never wait for one another's connection.
ENV_READ_SECONDS = 0.25


class UrlSourceConfig(LiveSourceConfig):
    """An IP camera or stream: RTSP, HTTP(S), MJPEG, through OpenCV's FFmpeg backend."""

    type: Literal["url"] = "url"
    url: str = Field(description="rtsp://, rtsps://, http:// or https:// URL; credentials in it are never logged")
    transport: Literal["tcp", "udp"] = Field("tcp", description="RTSP transport")
    open_timeout_seconds: float = Field(10.0, gt=0, le=300, description="give up opening after this")
    read_timeout_seconds: float = Field(5.0, gt=0, le=300, description="no frame within this = connection lost")

    @field_validator("url")
    @classmethod
    def _scheme(cls, v: str) -> str:
        if not v.lower().startswith(("rtsp://", "rtsps://", "http://", "https://")):
            raise ValueError("url must start with rtsp://, rtsps://, http:// or https://")
        return v


class GStreamerSourceConfig(LiveSourceConfig):
    """A GStreamer pipeline ending in appsink (needs an OpenCV built with GStreamer)."""

    type: Literal["gstreamer"] = "gstreamer"
    pipeline: str = Field(
        description="e.g. 'libcamerasrc ! video/x-raw,width=1280,height=720 ! videoconvert ! "
        "video/x-raw,format=BGR ! appsink drop=true max-buffers=1'"
    )


class Picamera2SourceConfig(LiveSourceConfig):
    """A Raspberry Pi camera through picamera2 (libcamera), when that module is importable."""

    type: Literal["picamera2"] = "picamera2"
    width: int = Field(1280, ge=16)
    height: int = Field(720, ge=16)
    fps: float = Field(30.0, gt=0)


def ffmpeg_options(url: str, transport: str) -> str | None:
    """The ``OPENCV_FFMPEG_CAPTURE_OPTIONS`` string for ``url`` (``key;value|key;value``); None: any."""
    if url.lower().startswith(("rtsp://", "rtsps://")):
        return f"rtsp_transport;{transport}"
    return None  # HTTP ignores the RTSP transport: whatever another camera's open set will do


class CaptureOptions:
    """The process-wide FFmpeg options, set for each open without holding a lock across it.

    Opens that need the value already set (every RTSP camera over TCP, say) do not wait at
    all; one that needs another waits at most ``ENV_READ_SECONDS`` after the last change.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._set_at = -1e9

    def use(self, value: str | None) -> None:
        """Set ``value`` (None: any value will do, e.g. for an HTTP URL) for the open about to begin."""
        if value is None:
            return
        with self._cond:
            while os.environ.get(ENV, "") != value:
                wait = self._set_at + ENV_READ_SECONDS - time.monotonic()
                if wait <= 0:
                    os.environ[ENV] = value
                    break
                self._cond.wait(wait)
            self._set_at = time.monotonic()


CAPTURE_OPTIONS = CaptureOptions()


class NetworkSource(CaptureSource):
    kind = "url"

    def __init__(self, cfg: UrlSourceConfig, name: str = "") -> None:
        super().__init__(name)
        self.cfg = cfg

    def describe(self) -> str:
        return redact(self.cfg.url)

    def _lost(self) -> str:
        return f"no frame from {redact(self.cfg.url)} (connection lost or timed out)"

    def _open_capture(self) -> cv2.VideoCapture:
        c = self.cfg
        params = [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(c.open_timeout_seconds * 1000),
            cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(c.read_timeout_seconds * 1000),
        ]  # fmt: skip
        code = preflight(c.url, c.open_timeout_seconds)  # a camera that does not answer never reaches OpenCV
        CAPTURE_OPTIONS.use(ffmpeg_options(c.url, c.transport))
        cap = cv2.VideoCapture(c.url, cv2.CAP_FFMPEG, params)  # blocks up to the open timeout; no lock of ours
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"cannot open {redact(c.url)}: {why_not_open(c.url, code)}")
        return cap


def opencv_has_gstreamer() -> bool:
    for line in cv2.getBuildInformation().splitlines():
        if line.strip().startswith("GStreamer:"):
            return "YES" in line
    return False


class GStreamerSource(CaptureSource):
    """A GStreamer pipeline ending in ``appsink`` (e.g. libcamera on Raspberry Pi), where
    OpenCV was built with GStreamer (Debian's / Raspberry Pi OS's python3-opencv)."""

    kind = "gstreamer"

    def __init__(self, cfg: GStreamerSourceConfig, name: str = "") -> None:
        super().__init__(name)
        self.cfg = cfg

    def describe(self) -> str:
        return f"gstreamer {redact(self.cfg.pipeline)[:80]}"

    def _lost(self) -> str:
        return "the GStreamer pipeline stopped delivering frames"

    def _open_capture(self) -> cv2.VideoCapture:
        if not opencv_has_gstreamer():
            raise SourceError(
                "this OpenCV has no GStreamer support (the PyPI opencv-python wheels do not); use Debian's "
                "python3-opencv (create the venv with --system-site-packages) or a url/camera source"
            )
        cap = cv2.VideoCapture(self.cfg.pipeline, cv2.CAP_GSTREAMER)
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"cannot start GStreamer pipeline {redact(self.cfg.pipeline)[:120]}")
        return cap


class Picamera2Source(Source):
    """A Raspberry Pi camera through picamera2 (libcamera), where that module is importable."""

    kind = "picamera2"
    live = True

    def __init__(self, cfg: Picamera2SourceConfig, name: str = "") -> None:
        super().__init__(name)
        self.cfg = cfg
        self.cam: Any = None

    def describe(self) -> str:
        return f"picamera2 {self.cfg.width}x{self.cfg.height}"

    def open(self) -> None:
        try:
            from picamera2 import Picamera2  # type: ignore[import-not-found]
        except ImportError:
            raise SourceError(
                "picamera2 is not importable: install python3-picamera2 (Raspberry Pi OS) and create the venv "
                "with --system-site-packages, or use a gstreamer source with libcamerasrc"
            ) from None
        c = self.cfg
        try:
            cam = Picamera2()
            config = cam.create_video_configuration(
                # picamera2's "RGB888" is stored B, G, R per pixel: OpenCV's BGR order
                main={"size": (c.width, c.height), "format": "RGB888"},
                controls={"FrameRate": c.fps},
            )
            cam.configure(config)
            cam.start()
        except Exception as exc:
            raise SourceError(f"cannot start the Raspberry Pi camera: {exc}") from None
        self.cam = cam

    def _grab(self) -> tuple[np.ndarray, str | None, Mapping[str, Any] | None] | None:
        if self.closed:
            return None
        try:
            image = self.cam.capture_array("main")
        except Exception as exc:
            raise SourceError(f"the Raspberry Pi camera stopped delivering frames: {exc}") from None
        return np.ascontiguousarray(image[:, :, :3]), None, None

    def release(self) -> None:
        cam, self.cam = self.cam, None
        if cam is not None:
            try:
                cam.stop()
                cam.close()
            except Exception:
                pass


SOURCES.register("url", UrlSourceConfig, NetworkSource)
SOURCES.register("gstreamer", GStreamerSourceConfig, GStreamerSource)
SOURCES.register("picamera2", Picamera2SourceConfig, Picamera2Source)
