"""Real network cameras on loopback, for testing network sources and their reconnection.

Imported by tests as ``from support.servers import MjpegServer, RtspServer``.

Each server runs in its own child process, so that

- ``kill()`` (SIGKILL) drops every connection at once, like a camera losing power or
  crashing: the kernel closes the sockets, clients see the connection end;
- ``pause()`` (SIGSTOP) freezes it with its connections open, like a camera that hangs or a
  network that stops delivering: clients see nothing until their own timeout; ``resume()``
  (SIGCONT) carries on;
- ``start()`` again on the same port brings it back (both servers set SO_REUSEADDR).

``MjpegServer``: ``http://127.0.0.1:PORT/stream.mjpg`` (multipart/x-mixed-replace) and
``/snapshot.jpg``, from the venv's python (``tests/support/mjpeg.py``).

``RtspServer``: ``rtsp://127.0.0.1:PORT/live`` (Motion JPEG over RTP), GStreamer's RTSP
server run by Debian's ``/usr/bin/python3`` (``tests/support/rtsp.py``), which needs the
packages of :func:`apt_packages`; without them ``start()`` raises RuntimeError (not a skip).
"""

from __future__ import annotations

import binascii
import os
import pickle
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from support.client import free_port
from support.wait import wait_for

SUPPORT = Path(__file__).resolve().parent  # the scripts the children run: mjpeg.py, rtsp.py
TESTS = SUPPORT.parent  # on the children's import path: a frame= function may live in a test module
SYSTEM_PYTHON = "/usr/bin/python3"

# Debian 12 packages the RTSP server needs (install with --no-install-recommends):
# the GObject bindings, the RTSP server library and its typelib, and the elements of the
# pipeline: videotestsrc (base), jpegenc and rtpjpegpay (good). libgstrtspserver-1.0-0
# itself also pulls in gstreamer1.0-plugins-bad.
APT_PACKAGES = [
    "python3-gi",
    "gir1.2-gst-rtsp-server-1.0",
    "gstreamer1.0-plugins-base",
    "gstreamer1.0-plugins-good",
]

# bits of the frame number in the top band of numbered_frame(): BITS cells of CELL pixels
BAND_ROWS = 16
CELL = 32
BITS = 20


def apt_packages() -> list[str]:
    """The Debian packages :class:`RtspServer` needs (``apt-get install --no-install-recommends``)."""
    return list(APT_PACKAGES)


def numbered_frame(i: int, width: int = 640, height: int = 480) -> np.ndarray:
    """A BGR test frame: ``i`` drawn big, and written in binary in the top band so that
    :func:`frame_number` reads it back after JPEG (CELL-wide black/white cells, MSB first)."""
    image = np.full((height, width, 3), 40, np.uint8)
    cell = min(CELL, width // BITS)
    for b in range(BITS):
        if (i >> (BITS - 1 - b)) & 1:
            image[:BAND_ROWS, b * cell : (b + 1) * cell] = 255
        else:
            image[:BAND_ROWS, b * cell : (b + 1) * cell] = 0
    cv2.putText(image, str(i), (20, height // 2 + 60), cv2.FONT_HERSHEY_SIMPLEX, 5, (255, 255, 255), 12)
    x = int((i * 8) % width)  # something that moves
    cv2.circle(image, (x, height - 60), 30, (0, 200, 255), -1)
    return image


def frame_number(image: np.ndarray) -> int:
    """The number :func:`numbered_frame` wrote into ``image`` (read from the top band)."""
    cell = min(CELL, image.shape[1] // BITS)
    row = image[BAND_ROWS // 2]
    if row.ndim == 2:
        row = row.mean(axis=1)
    value = 0
    for b in range(BITS):
        value = (value << 1) | int(row[b * cell + cell // 2] > 127)
    return value


def _port_open(port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


class _ChildServer:
    """A server in a child process: start, kill (SIGKILL), pause/resume, stop (SIGTERM)."""

    scheme = ""
    path = ""
    start_timeout = 15.0

    def __init__(self, port: int | None = None, user: str | None = None, password: str | None = None) -> None:
        self.port = port or free_port()
        self.user = user
        self.password = password
        self.proc: subprocess.Popen | None = None
        self._log: str | None = None  # what the child prints, a temporary file made at start()

    # -- subclass hooks
    def _command(self) -> list[str]:  # pragma: no cover - overridden
        raise NotImplementedError

    def _env(self) -> dict[str, str]:
        return dict(os.environ)

    def _check(self) -> None:
        pass

    # -- public
    @property
    def url(self) -> str:
        auth = f"{self.user}:{self.password or ''}@" if self.user is not None else ""
        return f"{self.scheme}://{auth}127.0.0.1:{self.port}{self.path}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def output(self) -> str:
        """What the child printed (stdout and stderr) since the last start."""
        if self._log is None:
            return ""
        try:
            return Path(self._log).read_text(errors="replace")
        except OSError:
            return ""

    def start(self) -> None:
        """Start the child; return once the port accepts connections."""
        if self.running:
            raise RuntimeError(f"{type(self).__name__} on port {self.port} is already running")
        self._check()
        if self._log is None:
            fd, self._log = tempfile.mkstemp(prefix=f"edged-{type(self).__name__}-", suffix=".log")
            os.close(fd)
        with open(self._log, "wb") as log:
            self.proc = subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._env(),
                cwd=str(SUPPORT),
                start_new_session=True,  # a ^C in the terminal is for pytest, not the camera
            )

        def accepting() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                out = self.output().strip()
                self.proc = None
                raise RuntimeError(f"{type(self).__name__} on port {self.port} exited at start: {out or 'no output'}")
            return "READY" in self.output() and _port_open(self.port)

        try:
            wait_for(accepting, self.start_timeout, "the server to accept connections")
        except AssertionError:
            self.kill()
            raise RuntimeError(
                f"{type(self).__name__} did not accept connections on port {self.port} "
                f"within {self.start_timeout:g}s: {self.output().strip()}"
            ) from None

    def _signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL: every connection is closed by the kernel at once. Waits for the exit."""
        if self.proc is not None:
            self._signal(signal.SIGCONT)  # a paused child dies just as well, but be tidy
            self._signal(signal.SIGKILL)
            self.proc.wait()
            self.proc = None

    def pause(self) -> None:
        """SIGSTOP: the server stays with its connections open and sends nothing."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 5 s. Idempotent."""
        if self.proc is None:
            return
        self._signal(signal.SIGCONT)
        self._signal(signal.SIGTERM)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.kill()
        self.start()

    def close(self) -> None:
        self.stop()
        self._remove_log()

    def _remove_log(self) -> None:
        if self._log is not None:
            try:
                os.unlink(self._log)
            except OSError:
                pass
            self._log = None

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # never leave a camera behind
        proc = getattr(self, "proc", None)
        if proc is not None and proc.poll() is None:
            proc.kill()
        if getattr(self, "_log", None) is not None:
            self._remove_log()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<{type(self).__name__} {self.url} {state}>"


class MjpegServer(_ChildServer):
    """An HTTP MJPEG camera: ``url`` is ``http://[user:password@]127.0.0.1:PORT/stream.mjpg``.

    ``frame(i) -> BGR ndarray`` makes frame ``i`` (default :func:`numbered_frame`); it runs
    in the child, so it must be picklable by reference: a module-level function of an
    importable module (a test module is fine) or a ``functools.partial`` of one.
    """

    scheme = "http"
    path = "/stream.mjpg"

    def __init__(
        self,
        port: int | None = None,
        fps: float = 15,
        user: str | None = None,
        password: str | None = None,
        frame: Callable[[int], np.ndarray] | None = None,
    ) -> None:
        super().__init__(port, user, password)
        self.fps = fps
        self._frame = None
        if frame is not None:
            try:
                self._frame = binascii.hexlify(pickle.dumps(frame)).decode()
            except (pickle.PicklingError, AttributeError, TypeError) as exc:
                raise TypeError(
                    "frame= must be a module-level function (or a partial of one): "
                    f"it runs in the server's process: {exc}"
                ) from exc

    @property
    def snapshot_url(self) -> str:
        return self.url.rsplit("/", 1)[0] + "/snapshot.jpg"

    def _command(self) -> list[str]:
        cmd = [sys.executable, str(SUPPORT / "mjpeg.py"), "--port", str(self.port), "--fps", str(self.fps)]
        if self.user is not None:
            cmd += ["--user", self.user, "--password", self.password or ""]
        if self._frame:
            cmd += ["--frame", self._frame]
        return cmd

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        # the frame callable is unpickled in the child: give it this process's import path
        paths = [p for p in sys.path if p and Path(p).exists()]
        env["PYTHONPATH"] = os.pathsep.join([str(TESTS), *paths])
        return env


_GI_CHECKED = False
_GI_PROBE = """
import gi
gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import Gst, GstRtspServer
Gst.init(None)
missing = [e for e in ("videotestsrc", "jpegenc", "rtpjpegpay", "rtpbin") if Gst.ElementFactory.find(e) is None]
if missing:
    raise SystemExit("missing GStreamer elements: " + " ".join(missing))
"""


def check_rtsp_support() -> None:
    """Raise RuntimeError naming the packages when /usr/bin/python3 cannot run the RTSP server."""
    global _GI_CHECKED
    if _GI_CHECKED:
        return
    hint = "install them with: apt-get install -y --no-install-recommends " + " ".join(APT_PACKAGES)
    if not Path(SYSTEM_PYTHON).exists():
        raise RuntimeError(f"RtspServer needs Debian's {SYSTEM_PYTHON} with GStreamer's RTSP server; {hint}")
    r = subprocess.run([SYSTEM_PYTHON, "-c", _GI_PROBE], capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        why = (r.stderr.strip().splitlines() or [f"exit {r.returncode}"])[-1]
        raise RuntimeError(f"RtspServer: {SYSTEM_PYTHON} cannot run GStreamer's RTSP server ({why}); {hint}")
    _GI_CHECKED = True


class RtspServer(_ChildServer):
    """An RTSP camera: ``url`` is ``rtsp://[user:password@]127.0.0.1:PORT/live``.

    A moving ball (videotestsrc), 640x480 JPEG over RTP, ``fps`` an integer. One pipeline
    shared by every client. With ``user``, clients without these credentials get 401.
    """

    scheme = "rtsp"
    path = "/live"

    def __init__(
        self,
        port: int | None = None,
        fps: int = 15,
        user: str | None = None,
        password: str | None = None,
        width: int = 640,
        height: int = 480,
    ) -> None:
        super().__init__(port, user, password)
        self.fps = int(fps)
        self.width = width
        self.height = height

    def _check(self) -> None:
        check_rtsp_support()

    def _command(self) -> list[str]:
        cmd = [
            SYSTEM_PYTHON,
            str(SUPPORT / "rtsp.py"),
            "--port", str(self.port),
            "--fps", str(self.fps),
            "--width", str(self.width),
            "--height", str(self.height),
        ]  # fmt: skip
        if self.user is not None:
            cmd += ["--user", self.user, "--password", self.password or ""]
        return cmd

    def _env(self) -> dict[str, str]:
        # Debian's python, not the venv's: drop what would point it at the venv
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
        return env


__all__ = [
    "MjpegServer",
    "RtspServer",
    "apt_packages",
    "check_rtsp_support",
    "frame_number",
    "free_port",
    "numbered_frame",
]
