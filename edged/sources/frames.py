"""Frame buffers a source decodes into again, once nothing downstream holds them.

A 1280x720 BGR frame is 2.7 MB; ``cv2.VideoCapture.read()`` allocates a new one per frame
unless it is handed an array of the frame's shape and dtype, which it then fills in place.
A frame travels on after its read (the latest-frame slot, an inference under way, the
stream's ``latest_frame`` kept for the HTTP snapshot, sinks), so a buffer is handed out
again only when CPython's reference count says the pool is its sole holder. A view of a
buffer keeps its base alive (``view.base``), so a view held downstream blocks reuse too.
Otherwise the read allocates, as before; the pool keeps at most ``size`` buffers: when it
is full, the one held longest downstream leaves it (with its holder) for the new one.

Only Python references count: code that keeps a raw pointer to the pixels (through
``ctypes.data``, say) without holding the array, or a weak reference to it, is not seen.
"""

from __future__ import annotations

import sys
from typing import Optional

import cv2
import numpy as np

DEFAULT_SIZE = 8  # a frame being read, the slot's, the one in inference, latest_frame, sinks': room to spare


def _count(buffers: list[np.ndarray], i: int) -> int:
    return sys.getrefcount(buffers[i])


def _sole_count() -> int:
    """The count ``_count`` gives for an array held by nothing but the list: measured, not
    assumed (CPython 3.14 borrows some references on its stack and counts one less)."""
    probe = [np.empty(1, np.uint8)]
    return _count(probe, 0)


SOLE = _sole_count()


class FramePool:
    """``take()`` a buffer to decode into (None: let the reader allocate), then ``keep()``
    what the read returned. Used by one reading thread; other threads only drop references."""

    def __init__(self, size: int = DEFAULT_SIZE) -> None:
        self.size = size
        self._buffers: list[np.ndarray] = []
        self._held: list[int] = []  # per buffer: the takes it has been found held in a row
        self.reused = 0  # reads that got a buffer back (for tests and the bench)
        self.allocated = 0  # reads that did not

    def take(self) -> Optional[np.ndarray]:
        """A buffer nothing but the pool holds, or None when every one is still in use."""
        found: Optional[int] = None
        for i in range(len(self._buffers)):  # every one looked at: how long each has been held
            if _count(self._buffers, i) <= SOLE:
                self._held[i] = 0
                if found is None:
                    found = i
            else:
                self._held[i] += 1
        if found is None:
            self.allocated += 1
            return None
        self.reused += 1
        return self._buffers[found]

    def keep(self, image: np.ndarray) -> None:
        """Note the array a read returned: a new one joins the pool, in place of the buffer
        held longest when the pool is full. One of another shape or dtype (the stream changed
        resolution) replaces the pool's buffers."""
        if any(b is image for b in self._buffers):
            return
        if self._buffers and (self._buffers[0].shape != image.shape or self._buffers[0].dtype != image.dtype):
            self.clear()  # the old ones stay alive for as long as downstream holds them
        if not image.flags.c_contiguous or image.base is not None:
            return
        if len(self._buffers) >= self.size:
            # full of buffers still held (a read allocates only when none is free): the one held
            # longest leaves the pool, to whoever holds it, so that a frame kept for good (a
            # sink's, a snapshot's) does not take a place for good
            longest = max(range(len(self._buffers)), key=self._held.__getitem__)
            del self._buffers[longest], self._held[longest]
        self._buffers.append(image)
        self._held.append(0)

    def read(self, cap: cv2.VideoCapture) -> tuple[bool, Optional[np.ndarray]]:
        """``cap.read()`` into a free buffer when there is one (OpenCV fills an array of the
        frame's shape and dtype in place, and allocates a new one otherwise)."""
        buf = self.take()
        ok, image = cap.read() if buf is None else cap.read(image=buf)
        del buf
        if ok and image is not None:
            self.keep(image)
        return ok, image

    def clear(self) -> None:
        self._buffers, self._held = [], []

    def __len__(self) -> int:
        return len(self._buffers)
