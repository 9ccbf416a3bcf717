"""Frame sources behind one small protocol (see :class:`edged.sources.base.Source`).

Each kind of source is chosen by the ``type`` field of its configuration; a kind registers
its configuration class and its factory in :data:`edged.registry.SOURCES` in the module of
its implementation. Importing :mod:`.kinds` registers the kinds this package holds
(:mod:`edged.config` does); the package alone does not import them, so that a one-shot
command reading an image file (``edged infer``) does not import cameras and network streams.
"""

from __future__ import annotations

import os

import cv2

from ..registry import SOURCES, KindConfig
from .base import Frame, Source

LOG_LEVEL_ERROR = 2  # OpenCV's cv::utils::logging::LOG_LEVEL_ERROR (0 silent, 1 fatal, 2 error)


def quiet_opencv() -> None:
    """FFmpeg's and OpenCV's own messages (a line or two per failed open of a camera, written
    straight to stderr, past edged's log format) are silenced: edged says what failed, once.
    ``OPENCV_FFMPEG_LOGLEVEL`` / ``OPENCV_LOG_LEVEL`` set in the environment win (debugging)."""
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # read at the first FFmpeg open
    if "OPENCV_LOG_LEVEL" not in os.environ:
        if hasattr(cv2, "setLogLevel"):  # OpenCV 4 (numpy<2, the tflite extra's)
            cv2.setLogLevel(LOG_LEVEL_ERROR)
        else:  # OpenCV 5
            cv2.utils.logging.setLogLevel(LOG_LEVEL_ERROR)


quiet_opencv()


def make_source(cfg: KindConfig, name: str = "") -> Source:
    """Build the source a config section describes (not yet opened)."""
    return SOURCES.get(cfg.type).factory(cfg, name)


__all__ = ["Frame", "Source", "make_source"]
