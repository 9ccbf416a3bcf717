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
from .imagesize import MAX_IMAGE_PIXELS, image_size

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
    size = image_size(p)  # from the header: a huge image is refused before it is decoded
    if size is not None and size[0] * size[1] > MAX_IMAGE_PIXELS:
        raise SourceError(
            f"image {p} is {size[0]}x{size[1]} pixels, over edged's limit of {MAX_IMAGE_PIXELS // 1_000_000} "
            "megapixels: scale it down"
        )
    try:
        image = cv2.imread(str(p), cv2.IMREAD_COLOR)
    except (cv2.error, MemoryError) as exc:  # OpenCV's own size limit, or no memory for the pixels
        reason = "not enough memory" if isinstance(exc, MemoryError) else str(exc).strip().splitlines()[-1]
        raise SourceError(f"cannot decode image {p}: {reason}") from None
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
        self._bad: set[Path] = set()  # the files that failed and have not been read since (logged once)
        self._skipped: set[Path] = set()  # loop: false: the files never read

    def open(self) -> None:
        self.files = list_images(self.cfg.path)
        if not self.files:
            raise SourceError(f"no images found at {self.cfg.path}")

    def describe(self) -> str:
        return f"{len(self.files)} image(s) from {self.cfg.path}"

    def _fps(self) -> float | None:
        return self.cfg.fps or None

    @property
    def finite(self) -> bool:
        return not self.cfg.loop

    def end_error(self) -> str | None:
        if not self._skipped:
            return None
        return f"{len(self._skipped)} of {len(self.files)} image(s) could not be read"

    def _grab(self) -> tuple[np.ndarray, str | None, Mapping[str, Any] | None] | None:
        """The next readable image. A file that fails is skipped (logged once until it reads
        again); looped, when a whole round fails (a lone file being rewritten, say) the error
        is raised, and the stream tries again with backoff."""
        error: SourceError | None = None
        for _ in range(len(self.files)):
            if self._pos >= len(self.files):
                if not self.cfg.loop:
                    return None
                self._pos = 0
            path = self.files[self._pos]
            self._pos += 1
            try:
                image = read_image(path)
            except SourceError as exc:
                error = exc
                if not self.cfg.loop:
                    self._skipped.add(path)
                if path not in self._bad and (len(self.files) > 1 or not self.cfg.loop):
                    log.warning(
                        "stream %s: skipping %s", self.name, exc, extra={"stream": self.name, "stage": "source"}
                    )
                self._bad.add(path)
                continue
            self._bad.discard(path)
            return image, str(path), None
        if not self.cfg.loop or error is None:
            return None
        raise error if len(self.files) == 1 else SourceError(f"none of the images can be read: {error}")


SOURCES.register("images", ImagesSourceConfig, ImagesSource)
