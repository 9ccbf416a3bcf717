"""Frame buffers reused: never one still held downstream (directly or through a view), always a free one."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from edged.config import config_from_dict
from edged.daemon.wiring import build_stream
from edged.errors import SourceError
from edged.metrics import Metrics
from edged.sources import make_source
from edged.sources.capture import CaptureSource
from edged.sources.frames import FramePool
from edged.sources.video import VideoSourceConfig as VideoCfg

W, H = 160, 120


def _video(path: Path, frames: int = 24) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 20.0, (W, H))
    assert writer.isOpened()
    for i in range(frames):
        writer.write(np.full((H, W, 3), (i % 12) * 20, np.uint8))  # the value encodes the frame number
    writer.release()
    return path


def _frame() -> np.ndarray:
    return np.zeros((H, W, 3), np.uint8)


def test_a_free_buffer_is_handed_out_again() -> None:
    pool = FramePool()
    assert pool.take() is None  # nothing yet: the reader allocates
    image = _frame()
    address = image.ctypes.data
    pool.keep(image)
    del image
    buf = pool.take()
    assert buf is not None and buf.ctypes.data == address
    assert pool.reused == 1 and pool.allocated == 1


def test_a_buffer_held_downstream_is_never_handed_out() -> None:
    pool = FramePool()
    image = _frame()
    pool.keep(image)
    assert pool.take() is None  # the caller still holds it
    slot = {"latest_frame": (object(), image)}  # as the stream keeps it for the HTTP snapshot
    del image
    assert pool.take() is None
    slot.clear()
    assert pool.take() is not None


def test_a_view_held_downstream_blocks_reuse() -> None:
    pool = FramePool()
    image = _frame()
    pool.keep(image)
    crop = image[10:50, 20:80, 1]  # a sink's crop, a channel: a view whose base is the buffer
    crop2 = crop[::2]  # a view of a view
    del image, crop
    assert pool.take() is None
    assert crop2.base is not None
    del crop2
    buf = pool.take()
    assert buf is not None


def test_the_pool_is_bounded_and_follows_a_change_of_resolution() -> None:
    pool = FramePool(size=3)
    held = [_frame() for _ in range(5)]
    for image in held:
        pool.keep(image)
    assert len(pool) == 3
    assert pool.take() is None  # all three still held
    assert [b is h for b, h in zip(pool._buffers, held[2:])] == [True] * 3  # the newest
    del held[4], image
    assert pool.take() is not None and len(pool) == 3
    for _ in range(3):
        assert pool.take() is not None  # held[4] is free again: held[2] and held[3] are held longer
    pool.keep(_frame())  # (this one is dropped at once)
    assert len(pool) == 3 and not any(b is held[2] for b in pool._buffers)  # the one held longest left
    assert pool.take() is not None and len(pool) == 3
    small = np.zeros((60, 80, 3), np.uint8)
    pool.keep(small)
    assert len(pool) == 1  # the old size's buffers are dropped (the holders keep theirs alive)
    assert int(held[0].sum()) == 0
    del small
    buf = pool.take()
    assert buf is not None and buf.shape == (60, 80, 3)
    pool.keep(np.zeros((H, W), np.uint16))  # another dtype or channel count too
    again = pool.take()
    assert len(pool) == 1 and again is not None and again.shape == (H, W) and again.dtype == np.uint16
    del again


def test_views_and_non_contiguous_arrays_never_join() -> None:
    pool = FramePool()
    base = _frame()
    pool.keep(base[:, :, :2])  # a view: its memory is another array's
    pool.keep(np.asfortranarray(_frame()))
    assert len(pool) == 0


def _values(frames: list) -> list[int]:
    return [int(np.median(f.image)) for f in frames]


def test_video_frames_kept_downstream_are_never_overwritten(tmp_path: Path) -> None:
    path = _video(tmp_path / "clip.avi")
    with make_source(VideoCfg(path=str(path), realtime=False, loop=True), "v") as src:
        first = src.read()
        assert first is not None
        channel = first.image[:, :, 0]  # a view only: the frame itself is dropped
        expected = channel.copy()
        del first
        kept = [src.read() for _ in range(10)]  # kept whole, as a slot and latest_frame would
        for _ in range(30):
            f = src.read()
            assert f is not None
            assert not np.shares_memory(f.image, channel)
            assert not any(np.shares_memory(f.image, k.image) for k in kept)  # type: ignore[union-attr]
        assert np.array_equal(channel, expected)
        assert _values(kept) == pytest.approx([(i % 12) * 20 for i in range(1, 11)], abs=6)


def test_video_frames_dropped_downstream_are_decoded_into_again(tmp_path: Path) -> None:
    path = _video(tmp_path / "clip.avi")
    with make_source(VideoCfg(path=str(path), realtime=False, loop=True), "v") as src:
        addresses = set()
        values = []
        for _ in range(40):  # across the loop's rewind too
            f = src.read()
            assert f is not None
            addresses.add(f.image.ctypes.data)
            values.append(int(np.median(f.image)))
            del f
        # the previous frame is still held while the next is read: two buffers take turns
        assert len(addresses) <= 2
        assert values == pytest.approx([(i % 24 % 12) * 20 for i in range(40)], abs=6)
        assert src._pool.reused >= 38


class _FileCapture(CaptureSource):
    """The live sources' read path (camera, url, gstreamer), on a file."""

    kind = "test"

    def __init__(self, path: Path) -> None:
        super().__init__("c")
        self.path = path

    def _open_capture(self) -> cv2.VideoCapture:
        return cv2.VideoCapture(str(self.path), cv2.CAP_FFMPEG)

    def _lost(self) -> str:
        return "the file ended"


def test_capture_sources_reuse_free_buffers_only(tmp_path: Path) -> None:
    src = _FileCapture(_video(tmp_path / "clip.avi"))
    with src:
        held = src.read()
        assert held is not None
        expected = held.image.copy()
        addresses = set()
        for _ in range(20):
            f = src.read()
            assert f is not None and not np.shares_memory(f.image, held.image)
            addresses.add(f.image.ctypes.data)
            del f
        assert len(addresses) <= 2 and held.image.ctypes.data not in addresses
        assert np.array_equal(held.image, expected)
        del held
        src.release()  # a reconnect: the pool starts afresh
        assert len(src._pool) == 0
        src.open()
        assert src.read() is not None
        with pytest.raises(SourceError, match="ended"):
            while True:
                src.read()


def test_a_stream_never_overwrites_the_frames_it_shows_or_anyone_holds(tmp_path: Path, models_dir: Path) -> None:
    """Through the real stream: the ``latest_frame`` snapshots taken while it runs (whole,
    or a view of one channel) keep their pixels while later frames are decoded, and the
    source still reuses the buffers nobody holds."""
    path = _video(tmp_path / "clip.avi", frames=24)
    cfg = config_from_dict(
        {
            "streams": [
                {
                    "id": "v",
                    "source": {"type": "video", "path": str(path), "realtime": False, "loop": True},
                    "model": {
                        "path": str(models_dir / "mobilenet_v2_1.0_224_quant.tflite"),
                        "labels": str(models_dir / "imagenet_labels.txt"),
                        "threads": 1,
                    },
                    "sinks": [],
                }
            ]
        }
    )
    stream = build_stream(cfg.streams[0], Metrics())
    held: list[tuple[int, np.ndarray]] = []
    with stream:
        deadline = time.monotonic() + 20
        while (len(held) < 10 or stream.metrics.processed < 60) and time.monotonic() < deadline:
            pair = stream.latest_frame
            if pair is not None and (not held or pair[0].seq >= held[-1][0] + 4):  # one frame in four at most
                result, image = pair
                held.append((result.seq, image if len(held) % 2 else image[:, :, 1]))  # whole, or a view
            time.sleep(0.01)
    assert len(held) >= 10 and stream.metrics.processed >= 60, (len(held), stream.metrics.processed)
    for seq, image in held:  # frame seq of the looped 24-frame clip has the value (seq % 24 % 12) * 20
        assert int(np.median(image)) == pytest.approx((seq % 24 % 12) * 20, abs=6), seq
    images = [image if image.base is None else image.base for _, image in held]
    assert all(not np.shares_memory(a, b) for i, a in enumerate(images) for b in images[i + 1 :])
    pool = stream.source._pool  # type: ignore[attr-defined]
    # a new buffer only for a frame the test kept, or while the pool fills (8)
    assert pool.allocated <= len(held) + pool.size + 2, (pool.reused, pool.allocated, len(held))
    assert pool.reused >= stream.metrics.processed // 2, (pool.reused, pool.allocated, len(held))
