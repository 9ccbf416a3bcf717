"""An HTTP MJPEG camera on loopback, run as a child process by ``support.servers.MjpegServer``.

Never imported by the tests (only by this process). Usage::

    python tests/support/mjpeg.py --port 8080 [--fps 15] [--user U --password P] [--frame HEX]

``--frame`` is a pickled callable ``frame(i) -> BGR ndarray`` (hex), made by the parent; it
must be importable here (a module-level function, or a functools.partial of one). Default:
``support.servers.numbered_frame``.

One producer thread makes the frames at ``fps`` from the moment the server starts, like a
camera's sensor; every client is sent the newest frame each time one is made (a slow
client skips frames rather than falling behind), so frame numbers are the same for every
client and start at 0 again after a restart.

- ``/stream.mjpg``: ``multipart/x-mixed-replace; boundary=frame``
- ``/snapshot.jpg``: the newest frame as one JPEG
- anything else: 404; without the right basic-auth credentials (when set): 401
"""

from __future__ import annotations

import argparse
import base64
import binascii
import os
import pickle
import sys
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2

BOUNDARY = "frame"


class Camera:
    """Makes a JPEG every 1/fps seconds; clients wait for the next one."""

    def __init__(self, frame_fn, fps: float) -> None:
        self.frame_fn = frame_fn
        self.fps = fps
        self.cond = threading.Condition()
        self.jpeg: bytes | None = None
        self.index = -1

    def run(self) -> None:
        try:
            self._run()
        except BaseException:  # a broken frame() must not leave a server that sends nothing
            traceback.print_exc()
            sys.stdout.flush()
            os._exit(1)

    def _run(self) -> None:
        period = 1.0 / self.fps
        due = time.monotonic()
        i = 0
        while True:
            image = self.frame_fn(i)
            ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
            if not ok:
                raise RuntimeError(f"cannot encode frame {i}")
            with self.cond:
                self.jpeg, self.index = buf.tobytes(), i
                self.cond.notify_all()
            i += 1
            due += period
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)  # pacing, not synchronisation: a camera makes `fps` frames a second
            else:
                due = time.monotonic()  # never catch up on a backlog

    def next_after(self, index: int, timeout: float = 5.0) -> tuple[int, bytes]:
        with self.cond:
            if not self.cond.wait_for(lambda: self.index > index, timeout):
                raise TimeoutError("no frame produced")
            assert self.jpeg is not None
            return self.index, self.jpeg


def make_handler(camera: Camera, auth: str | None):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"
        server_version = "edged-test-camera/1.0"

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet
            pass

        def _authorised(self) -> bool:
            if auth is None:
                return True
            if self.headers.get("Authorization", "") == auth:
                return True
            body = b"401 unauthorised\n"
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="edged-test-camera"')
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return False

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            path = self.path.split("?", 1)[0]
            if path not in ("/stream.mjpg", "/snapshot.jpg"):
                self.send_error(404)
                return
            if not self._authorised():
                return
            try:
                if path == "/snapshot.jpg":
                    _, jpeg = camera.next_after(-1)
                    self.send_response(200)
                    self.send_header("Content-Type", "image/jpeg")
                    self.send_header("Content-Length", str(len(jpeg)))
                    self.send_header("Cache-Control", "no-cache")
                    self.end_headers()
                    self.wfile.write(jpeg)
                    return
                self.send_response(200)
                self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
                self.send_header("Cache-Control", "no-cache, private")
                self.send_header("Pragma", "no-cache")
                self.end_headers()
                index = max(camera.index - 1, -1)  # start with the newest frame
                while True:
                    index, jpeg = camera.next_after(index)
                    self.wfile.write(
                        f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n".encode()
                        + jpeg
                        + b"\r\n"
                    )
                    self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                return

    return Handler


class Server(ThreadingHTTPServer):
    allow_reuse_address = True  # a restart on the same port binds at once despite TIME_WAIT
    daemon_threads = True


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--fps", type=float, default=15.0)
    ap.add_argument("--user")
    ap.add_argument("--password")
    ap.add_argument("--frame", help="pickled frame(i) callable, hex")
    args = ap.parse_args()

    if args.frame:
        frame_fn = pickle.loads(binascii.unhexlify(args.frame))
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/
        from support.servers import numbered_frame as frame_fn

    auth = None
    if args.user is not None:
        token = base64.b64encode(f"{args.user}:{args.password or ''}".encode()).decode()
        auth = f"Basic {token}"

    camera = Camera(frame_fn, args.fps)
    httpd = Server(("127.0.0.1", args.port), make_handler(camera, auth))
    threading.Thread(target=camera.run, name="camera", daemon=True).start()
    print("READY", flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
