"""Frame sources behind one small protocol (see :class:`edged.sources.base.Source`).

Each kind of source is chosen by the ``type`` field of its configuration.
"""

from __future__ import annotations

from typing import Any

from .base import Frame, Source


def make_source(cfg: Any, name: str = "") -> Source:
    """Build the source a config section describes (not yet opened)."""
    kind = cfg.type
    if kind == "synthetic":
        from .synthetic import SyntheticSource

        return SyntheticSource(cfg, name)
    if kind == "video":
        from .video import VideoFileSource

        return VideoFileSource(cfg, name)
    if kind == "images":
        from .images import ImagesSource

        return ImagesSource(cfg, name)
    if kind == "camera":
        from .camera import CameraSource

        return CameraSource(cfg, name)
    if kind in ("url", "gstreamer", "picamera2"):
        from .network import GStreamerSource, NetworkSource, Picamera2Source

        cls = {"url": NetworkSource, "gstreamer": GStreamerSource, "picamera2": Picamera2Source}[kind]
        return cls(cfg, name)
    raise ValueError(f"unknown source type {kind!r}")


__all__ = ["Frame", "Source", "make_source"]
