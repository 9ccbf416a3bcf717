"""The loopback cameras of support/servers.py work with the reader edged uses: OpenCV's FFmpeg backend.

Also pins down how a read behaves when a camera dies (SIGKILL: the kernel closes the
connection) or hangs (SIGSTOP: the connection stays open, nothing arrives), and which
timeout knobs of this OpenCV build bound the wait. Measured here (opencv 5.0, avformat 62):

- killed camera: the read fails at once, after the frames FFmpeg had already buffered;
- hung camera, no options: a read blocks 30 s (OpenCV's own interrupt callback);
- ``CAP_PROP_READ_TIMEOUT_MSEC`` / ``CAP_PROP_OPEN_TIMEOUT_MSEC`` params: bound both protocols;
- ``OPENCV_FFMPEG_CAPTURE_OPTIONS`` ``timeout;µs``: bounds both (RTSP: the first failing read
  takes about twice it); ``rw_timeout``: HTTP only; ``stimeout``: ignored (removed from FFmpeg).
"""

from __future__ import annotations

import base64
import functools
import time
import urllib.error
import urllib.request

import cv2
import numpy as np
import pytest
import support.servers as servers
from support.client import free_port
from support.servers import MjpegServer, RtspServer, apt_packages, frame_number, numbered_frame

RTSP_TCP = "rtsp_transport;tcp"
OPTIONS = "OPENCV_FFMPEG_CAPTURE_OPTIONS"


def capture(url: str, *params: int) -> cv2.VideoCapture:
    return cv2.VideoCapture(url, cv2.CAP_FFMPEG, list(params)) if params else cv2.VideoCapture(url, cv2.CAP_FFMPEG)


def read_frames(cap: cv2.VideoCapture, n: int) -> list[np.ndarray]:
    frames = []
    for _ in range(n):
        ok, image = cap.read()
        assert ok and image is not None, f"read {len(frames)} of {n} frames, then a failure"
        frames.append(image)
    return frames


def read_until_failure(cap: cv2.VideoCapture, limit: float = 60.0) -> tuple[int, float, float]:
    """Read until a read fails: (frames read meanwhile, total seconds, seconds of the failing read)."""
    t0 = time.monotonic()
    n = 0
    while time.monotonic() - t0 < limit:
        t = time.monotonic()
        ok, _ = cap.read()
        if not ok:
            return n, time.monotonic() - t0, time.monotonic() - t
        n += 1
    raise AssertionError(f"reads still succeed {limit:g}s after the camera went away ({n} frames)")


def half_size_frame(i: int) -> np.ndarray:  # for MjpegServer(frame=...): runs in the server's process
    return numbered_frame(i, 320, 240)


# -- helpers


def test_apt_packages_and_frame_numbers_survive_jpeg() -> None:
    assert "gir1.2-gst-rtsp-server-1.0" in apt_packages() and "python3-gi" in apt_packages()
    for i in (0, 1, 2, 7, 255, 256, 1000, 54321, 2**20 - 1):
        ok, buf = cv2.imencode(".jpg", numbered_frame(i), [cv2.IMWRITE_JPEG_QUALITY, 50])
        assert ok
        assert frame_number(cv2.imdecode(buf, cv2.IMREAD_COLOR)) == i


@pytest.mark.system
def test_rtsp_without_gstreamer_is_a_clear_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setattr(servers, "SYSTEM_PYTHON", sys.executable)  # the venv's python has no gi
    monkeypatch.setattr(servers, "_GI_CHECKED", False)
    with pytest.raises(RuntimeError, match="gir1.2-gst-rtsp-server-1.0"):
        RtspServer(free_port()).start()


# -- HTTP MJPEG


@pytest.mark.system
def test_mjpeg_frames_in_order_and_snapshot() -> None:
    with MjpegServer(free_port(), fps=30) as cam:
        assert cam.url == f"http://127.0.0.1:{cam.port}/stream.mjpg"
        cap = capture(cam.url)
        assert cap.isOpened()
        frames = read_frames(cap, 12)
        cap.release()
        numbers = [frame_number(f) for f in frames]
        assert all(b > a for a, b in zip(numbers, numbers[1:])), numbers
        assert frames[0].shape == (480, 640, 3)
        with urllib.request.urlopen(cam.snapshot_url, timeout=5) as r:
            assert r.headers["Content-Type"] == "image/jpeg"
            snap = cv2.imdecode(np.frombuffer(r.read(), np.uint8), cv2.IMREAD_COLOR)
        assert frame_number(snap) >= numbers[-1]


@pytest.mark.system
def test_mjpeg_custom_frames() -> None:
    with pytest.raises(TypeError, match="module-level"):
        MjpegServer(free_port(), frame=lambda i: numbered_frame(i))
    with MjpegServer(free_port(), frame=half_size_frame) as cam:
        cap = capture(cam.url)
        assert read_frames(cap, 1)[0].shape == (240, 320, 3)
        cap.release()
    with MjpegServer(free_port(), frame=functools.partial(numbered_frame, width=160, height=120)) as cam:
        cap = capture(cam.url)
        assert read_frames(cap, 1)[0].shape == (120, 160, 3)
        cap.release()


@pytest.mark.system
def test_mjpeg_basic_auth() -> None:
    with MjpegServer(free_port(), user="viewer", password="s3cret") as cam:
        assert cam.url == f"http://viewer:s3cret@127.0.0.1:{cam.port}/stream.mjpg"
        anonymous = cam.url.replace("viewer:s3cret@", "")
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(anonymous, timeout=5)
        assert err.value.code == 401 and "Basic" in err.value.headers["WWW-Authenticate"]
        assert not capture(anonymous).isOpened()
        assert not capture(cam.url.replace("s3cret", "wrong")).isOpened()
        cap = capture(cam.url)  # FFmpeg sends the URL's credentials after the 401
        read_frames(cap, 10)
        cap.release()
        req = urllib.request.Request(cam.snapshot_url.replace("viewer:s3cret@", ""))
        req.add_header("Authorization", "Basic " + base64.b64encode(b"viewer:s3cret").decode())
        with urllib.request.urlopen(req, timeout=5) as r:
            assert r.status == 200


@pytest.mark.system
def test_mjpeg_kill_then_restart_on_the_same_port() -> None:
    cam = MjpegServer(free_port(), fps=30)
    with cam:
        cap = capture(cam.url)
        read_frames(cap, 10)
        cam.kill()  # like a power cut at the camera: the connection ends
        _, total, _ = read_until_failure(cap)
        assert total < 1.0
        assert not cap.read()[0]  # and stays failed, at once
        cap.release()
        t = time.monotonic()
        assert not capture(cam.url).isOpened()  # refused: fails at once
        assert time.monotonic() - t < 1.0

        cam.start()  # same port, at once (SO_REUSEADDR despite TIME_WAIT)
        cap = capture(cam.url)
        numbers = [frame_number(f) for f in read_frames(cap, 10)]
        cap.release()
        assert numbers[0] < 30, numbers  # a new camera process: numbering starts again


# Only OpenCV's own timeout parameters are checked: they are what edged uses, and they work
# in OpenCV 4.11 and 5.0 alike. FFmpeg's own options (timeout, rw_timeout) worked with
# OpenCV 5.0's FFmpeg but were ignored by 4.11's (reads then block for 30 s).
@pytest.mark.system
@pytest.mark.parametrize(
    "options, params",
    [(None, (cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, 1000, cv2.CAP_PROP_READ_TIMEOUT_MSEC, 1000))],
    ids=["cap-prop-read-timeout"],
)
def test_mjpeg_hung_camera_read_times_out(monkeypatch: pytest.MonkeyPatch, options, params) -> None:
    if options:
        monkeypatch.setenv(OPTIONS, options)  # read by OpenCV when the capture is opened
    else:
        monkeypatch.delenv(OPTIONS, raising=False)
    with MjpegServer(free_port(), fps=30) as cam:
        cap = capture(cam.url, *params)
        read_frames(cap, 10)
        cam.pause()  # connection open, nothing arrives
        _, total, last = read_until_failure(cap)
        assert 0.8 < last < 2.5, last
        assert total < 3.0
        t = time.monotonic()
        assert not cap.read()[0]
        assert time.monotonic() - t < 0.5  # a failed HTTP capture does not block again
        cap.release()
        cam.resume()
        cap = capture(cam.url, *params)
        read_frames(cap, 3)
        cap.release()


# -- RTSP


@pytest.fixture
def rtsp_tcp(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(OPTIONS, RTSP_TCP)


@pytest.mark.system
def test_rtsp_reads(rtsp_tcp: None) -> None:
    with RtspServer(free_port()) as cam:
        assert cam.url == f"rtsp://127.0.0.1:{cam.port}/live"
        cap = capture(cam.url)
        assert cap.isOpened()
        frames = read_frames(cap, 12)
        cap.release()
        assert frames[0].shape == (480, 640, 3)
        assert any(not np.array_equal(frames[0], f) for f in frames[1:])  # the ball moves


@pytest.mark.system
def test_rtsp_auth(rtsp_tcp: None) -> None:
    with RtspServer(free_port(), user="viewer", password="s3cret") as cam:
        assert cam.url == f"rtsp://viewer:s3cret@127.0.0.1:{cam.port}/live"
        assert not capture(cam.url.replace("viewer:s3cret@", "")).isOpened()  # 401
        assert not capture(cam.url.replace("s3cret", "wrong")).isOpened()
        cap = capture(cam.url)
        read_frames(cap, 10)
        cap.release()


@pytest.mark.system
def test_rtsp_kill_then_restart_on_the_same_port(rtsp_tcp: None) -> None:
    cam = RtspServer(free_port())
    with cam:
        cap = capture(cam.url)
        read_frames(cap, 10)
        cam.kill()
        buffered, total, _ = read_until_failure(cap)
        assert total < 1.0  # the frames FFmpeg buffered while opening, then the failure
        t = time.monotonic()
        assert not cap.read()[0]
        assert time.monotonic() - t < 1.0
        cap.release()
        assert not capture(cam.url).isOpened()

        cam.start()
        cap = capture(cam.url)  # a NEW capture reads again
        read_frames(cap, 10)
        cap.release()


@pytest.mark.system
@pytest.mark.parametrize(
    "options, params, bound",
    [(RTSP_TCP, (cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, 1000, cv2.CAP_PROP_READ_TIMEOUT_MSEC, 1000), (0.8, 2.0))],
    ids=["cap-prop-read-timeout"],
)
def test_rtsp_hung_camera_read_times_out(monkeypatch: pytest.MonkeyPatch, options, params, bound) -> None:
    monkeypatch.setenv(OPTIONS, options + "|analyzeduration;0|probesize;32")  # no 1.4 s probe
    with RtspServer(free_port()) as cam:
        cap = capture(cam.url, *params)
        read_frames(cap, 10)
        cam.pause()
        _, _, last = read_until_failure(cap)
        assert bound[0] < last < bound[1], last
        cap.release()  # does not block on a hung server
        cam.resume()
