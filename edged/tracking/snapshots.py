"""The snapshots of events: each event's best frame, its box and label drawn, as a JPEG file
``<directory>/<stream>/<event id>.jpg``, written atomically; the oldest files are deleted past
any of the limits (files, bytes, age)."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple, Union

import cv2
import numpy as np

from ..draw import annotate
from ..result import Box

NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$")
SUFFIX = ".jpg"


class SnapshotError(OSError):
    """A snapshot could not be written (full disk, unwritable directory): one line, to log once."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


def _name(kind: str, value: str) -> str:
    if not NAME.match(value):
        raise ValueError(f"snapshot {kind} {value!r}: letters, digits, '_', '-' and '.', not first")
    return value


class SnapshotStore:
    """The snapshots under ``directory``, across its streams (or of ``stream`` alone: each stream's
    own limits), within ``max_files``, ``max_bytes`` and ``max_age_seconds`` (the oldest go first)."""

    def __init__(
        self,
        directory: Union[str, Path],
        max_files: int,
        max_bytes: int,
        max_age_seconds: float,
        quality: int = 85,
        clock: Callable[[], float] = time.time,
        stream: Optional[str] = None,
    ) -> None:
        self.directory = Path(directory)
        self.stream = stream
        self.max_files, self.max_bytes, self.max_age_seconds = max_files, max_bytes, max_age_seconds
        self.quality = quality
        self._clock = clock
        self._files: Optional[Dict[Path, Tuple[float, int]]] = None  # oldest first: path -> (mtime, size)
        self.total_bytes = 0

    def _index(self) -> Dict[Path, Tuple[float, int]]:
        """The files there, read once (leftover temporary files deleted)."""
        if self._files is not None:
            return self._files
        found = []
        try:
            subs = [p for p in self.directory.iterdir() if p.is_dir()] if self.directory.is_dir() else []
            if self.stream is not None:
                subs = [p for p in subs if p.name == self.stream]
            for sub in subs:
                for entry in os.scandir(sub):
                    if entry.name.startswith(".") and entry.name.endswith(".tmp"):
                        Path(entry.path).unlink(missing_ok=True)
                    elif entry.name.endswith(SUFFIX) and entry.is_file():
                        st = entry.stat()
                        found.append((st.st_mtime, Path(entry.path), st.st_size))
        except OSError as exc:
            raise SnapshotError(f"snapshots {self.directory}: {exc.strerror or exc}") from None
        found.sort(key=lambda f: f[0])
        self._files = {path: (mtime, size) for mtime, path, size in found}
        self.total_bytes = sum(size for _, size in self._files.values())
        return self._files

    def save(self, stream: str, event_id: str, image_bgr: np.ndarray, box: Box, label: str, score: float) -> Path:
        """Write the snapshot of event ``event_id`` (again: replaced); ``SnapshotError`` if it cannot."""
        path = self.directory / _name("stream", stream) / (_name("event id", event_id) + SUFFIX)
        drawn = annotate(image_bgr, {"objects": [{"box": box.to_dict(), "label": label, "score": score}]})
        ok, buf = cv2.imencode(SUFFIX, drawn, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
        if not ok:  # pragma: no cover - OpenCV encodes any BGR image
            raise SnapshotError(f"snapshot {path}: JPEG encoding failed")
        files = self._index()
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(buf.tobytes())
            os.replace(tmp, path)
        except OSError as exc:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
            raise SnapshotError(f"snapshot {path}: {exc.strerror or exc}") from None
        old = files.pop(path, None)
        if old is not None:
            self.total_bytes -= old[1]
        files[path] = (self._clock(), len(buf))
        self.total_bytes += len(buf)
        self.prune()
        return path

    def prune(self) -> int:
        """Delete the oldest files past any limit; returns how many were deleted."""
        files = self._index()
        cutoff = self._clock() - self.max_age_seconds
        removed = 0
        while files:
            path, (mtime, size) = next(iter(files.items()))
            if len(files) <= self.max_files and self.total_bytes <= self.max_bytes and mtime >= cutoff:
                break
            del files[path]
            self.total_bytes -= size
            try:
                path.unlink(missing_ok=True)
            except OSError:
                pass  # deleted by someone else, or read-only: forgotten either way
            removed += 1
        return removed

    def latest(self, stream: str) -> Optional[Path]:
        """The newest snapshot of ``stream``, if any."""
        for path in reversed(self._index()):
            if path.parent.name == stream:
                return path
        return None
