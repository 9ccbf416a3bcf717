"""Sources: video files (looped, paced), image lists, the synthetic scene, camera errors."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from edged.demo.synthetic import SyntheticSourceConfig as SyntheticCfg
from edged.errors import SourceError
from edged.sources import make_source
from edged.sources.camera import CameraSourceConfig as CameraCfg
from edged.sources.images import ImagesSourceConfig as ImagesCfg
from edged.sources.images import list_images, read_image
from edged.sources.video import VideoSourceConfig as VideoCfg


def _video(path: Path, frames: int = 12, fps: float = 20.0) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (160, 120))
    assert writer.isOpened()
    for i in range(frames):
        img = np.zeros((120, 160, 3), np.uint8)
        cv2.putText(img, str(i), (40, 90), cv2.FONT_HERSHEY_SIMPLEX, 2.5, (255, 255, 255), 4)
        img[:, :, 2] = (i % 12) * 20  # red channel encodes the frame number
        writer.write(img)
    writer.release()
    return path


def test_video_loops_and_numbers_frames(tmp_path: Path) -> None:
    path = _video(tmp_path / "clip.avi", frames=12)
    src = make_source(VideoCfg(path=str(path), realtime=False, loop=True), "v")
    with src:
        frames = [src.read() for _ in range(30)]
    assert all(f is not None for f in frames)
    assert [f.seq for f in frames] == list(range(30))  # type: ignore[union-attr]
    reds = [int(np.median(f.image[:, :, 2])) for f in frames]  # type: ignore[union-attr]
    assert reds[0] == pytest.approx(0, abs=6) and reds[12] == pytest.approx(0, abs=6)  # frame 12 = frame 0 again
    assert reds[11] == pytest.approx(220, abs=6)


def test_video_without_loop_ends(tmp_path: Path) -> None:
    path = _video(tmp_path / "clip.avi", frames=5)
    with make_source(VideoCfg(path=str(path), realtime=False, loop=False), "v") as src:
        got = 0
        while src.read() is not None:
            got += 1
    assert got == 5


def test_video_is_paced_at_its_own_frame_rate(tmp_path: Path) -> None:
    path = _video(tmp_path / "clip.avi", frames=30, fps=20.0)
    with make_source(VideoCfg(path=str(path), realtime=True), "v") as src:
        t0 = time.monotonic()
        for _ in range(11):
            assert src.read() is not None
        elapsed = time.monotonic() - t0
    assert elapsed >= 0.45  # 10 intervals at 20 fps = 0.5 s; never faster than the file


def test_video_errors(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="video file not found"):
        make_source(VideoCfg(path=str(tmp_path / "none.mp4")), "v").open()
    (tmp_path / "fake.mp4").write_text("not a video")
    with pytest.raises(SourceError, match=r"fake\.mp4"):
        make_source(VideoCfg(path=str(tmp_path / "fake.mp4")), "v").open()


def test_images_directory_glob_and_bad_files(images_dir: Path, tmp_path: Path) -> None:
    with make_source(ImagesCfg(path=str(images_dir / "traffic"), fps=0, loop=False), "i") as src:
        origins = []
        while (f := src.read()) is not None:
            origins.append(Path(f.origin).name)  # type: ignore[arg-type]
    assert origins == ["0001.bmp", "0002.bmp", "0003.bmp"]
    with make_source(ImagesCfg(path=str(images_dir / "*.bmp"), fps=0, loop=False), "i") as src:
        assert len(src.files) == 3  # type: ignore[attr-defined]
    # a file that is not an image is skipped (logged once), the good ones go on
    (tmp_path / "a.jpg").write_bytes(cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))[1].tobytes())
    (tmp_path / "b.jpg").write_text("broken")
    with make_source(ImagesCfg(path=str(tmp_path), fps=0, loop=True), "i") as src:
        seen = [Path(src.read().origin).name for _ in range(3)]  # type: ignore[union-attr]
    assert seen == ["a.jpg", "a.jpg", "a.jpg"]
    with pytest.raises(SourceError, match="no images found"):
        make_source(ImagesCfg(path=str(tmp_path / "nothing" / "*.png")), "i").open()


def test_read_image_errors_and_listing(tmp_path: Path) -> None:
    """One owner for image files (the daemon's sources and the toolchain): one error class per fault."""
    (tmp_path / "b.jpg").write_text("broken")
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(SourceError, match=r"cannot decode image .*b\.jpg: not an image format OpenCV reads"):
        read_image(tmp_path / "b.jpg")
    with pytest.raises(SourceError, match="image not found"):
        read_image(tmp_path / "none.png")
    with pytest.raises(SourceError, match="image path is not a file"):
        read_image(tmp_path / "dir.png")
    assert list_images(tmp_path) == [tmp_path / "b.jpg"]  # a folder named like an image is not one
    assert list_images(str(tmp_path / "*.jpg")) == [tmp_path / "b.jpg"]


def test_synthetic_source_is_deterministic_and_knows_the_truth() -> None:
    cfg = SyntheticCfg(width=320, height=240, fps=1000, seed=3)
    with make_source(cfg, "s") as a, make_source(cfg, "s") as b:
        fa, fb = a.read(), b.read()
    assert fa is not None and fb is not None
    assert fa.image.shape == (240, 320, 3) and np.array_equal(fa.image, fb.image)
    assert fa.annotations == fb.annotations and fa.annotations["truth"]["label"] in [str(d) for d in range(10)]


def test_missing_camera_is_a_clear_error() -> None:
    src = make_source(CameraCfg(device="/dev/video97"), "cam")
    with pytest.raises(SourceError, match=r"cannot open camera /dev/video97"):
        src.open()


def test_gstreamer_and_picamera2_say_what_is_missing() -> None:
    """This machine's OpenCV (PyPI) has no GStreamer and there is no picamera2: clear errors."""
    from edged.sources.network import GStreamerSourceConfig as GstCfg
    from edged.sources.network import Picamera2SourceConfig as PiCfg
    from edged.sources.network import opencv_has_gstreamer

    gst = make_source(GstCfg(pipeline="videotestsrc ! videoconvert ! appsink"), "g")
    if opencv_has_gstreamer():  # an OpenCV built with GStreamer (Debian's): it really runs
        with gst:
            assert gst.read() is not None
    else:
        with pytest.raises(SourceError, match="no GStreamer support"):
            gst.open()
    pi = make_source(PiCfg(), "p")
    try:
        import picamera2  # noqa: F401
    except ImportError:
        with pytest.raises(SourceError, match="picamera2 is not importable"):
            pi.open()


def test_url_source_config() -> None:
    from pydantic import ValidationError

    from edged.sources.network import UrlSourceConfig, ffmpeg_options

    assert UrlSourceConfig(url="rtsp://cam/live").transport == "tcp"
    with pytest.raises(ValidationError, match="must start with rtsp://"):
        UrlSourceConfig(url="/dev/video0")
    assert ffmpeg_options("rtsp://cam/live", "udp") == "rtsp_transport;udp"
    assert ffmpeg_options("http://cam/mjpg", "tcp") is None
