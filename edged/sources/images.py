"""Still images: one file, a directory, or a glob, optionally looped and paced."""

from __future__ import annotations

import glob
import logging
from pathlib import Path
from typing import Any, Literal, Mapping

import cv2
import numpy as np
from pydantic import Field

from ..errors import SourceError
from ..registry import SOURCES, StrictConfig
from .base import Source

log = logging.getLogger(__name__)
# the image files edged reads, everywhere: a source's folder or glob, and the toolchain's --data folders
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".webp", ".tif", ".tiff")


def list_images(spec: str | Path) -> list[Path]:
    """The image files a spec names: a folder's (directly in it), one file, or a glob; sorted."""
    p = Path(spec)
    if p.is_dir():
        return sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES)
    if p.is_file():
        return [p]
    if glob.has_magic(str(spec)):
        return sorted(Path(q) for q in glob.glob(str(spec)) if Path(q).is_file())
    return []


def read_image(path: str | Path) -> np.ndarray:
    """An image as BGR uint8 [H,W,3], as the sources deliver frames; else a one-line SourceError."""
    p = Path(path)
    if not p.exists():
        raise SourceError(f"image not found: {p}")
    if not p.is_file():
        raise SourceError(f"image path is not a file: {p}")
    image = cv2.imread(str(p), cv2.IMREAD_COLOR)
    if image is None:
        raise SourceError(f"cannot decode image {p}: not an image format OpenCV reads")
    return image


class ImagesSourceConfig(StrictConfig):
    """An image file, a directory of images, or a glob pattern."""

    type: Literal["images"] = "images"
    path: str = Field(description="image file, directory, or glob such as 'frames/*.jpg'")
    fps: float = Field(1.0, ge=0, description="images per second (0: as fast as possible)")
    loop: bool = Field(True, description="start again after the last image")


class ImagesSource(Source):
    kind = "images"

    def __init__(self, cfg: ImagesSourceConfig, name: str = "") -> None:
        super().__init__(name)
        self.cfg = cfg
        self.files: list[Path] = []
        self._pos = 0
        self._bad: set[Path] = set()

    def open(self) -> None:
        self.files = list_images(self.cfg.path)
        if not self.files:
            raise SourceError(f"no images found at {self.cfg.path}")

    def describe(self) -> str:
        return f"{len(self.files)} image(s) from {self.cfg.path}"

    def _fps(self) -> float | None:
        return self.cfg.fps or None

    def _grab(self) -> tuple[np.ndarray, str | None, Mapping[str, Any] | None] | None:
        for _ in range(len(self.files) + 1):
            if self._pos >= len(self.files):
                if not self.cfg.loop or len(self._bad) == len(self.files):
                    return None
                self._pos = 0
            path = self.files[self._pos]
            self._pos += 1
            try:
                return read_image(path), str(path), None
            except SourceError as exc:
                if path not in self._bad:
                    self._bad.add(path)
                    log.warning("stream %s: skipping %s", self.name, exc)
        return None


SOURCES.register("images", ImagesSourceConfig, ImagesSource)
