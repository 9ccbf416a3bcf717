"""A camera that hangs: a TCP server on loopback that accepts every connection and never
answers a byte (firmware stuck, a half-open NAT path). An open of it blocks until its timeout.

With ``answer_first``, the first connection (edged's own preflight request) is answered with
that status line and closed, and the next ones hang: a camera that hangs in the middle of
FFmpeg's handshake, inside OpenCV's open, in C.

In-process (one accepting thread), so a test holds it with ``with HangingServer() as h``.
"""

from __future__ import annotations

import socket
import threading


class HangingServer:
    def __init__(self, answer_first: bytes | None = None) -> None:
        self._answer = answer_first
        self._sock = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.port: int = self._sock.getsockname()[1]
        self.accepted = 0
        self._held: list[socket.socket] = []  # open and silent until close()
        self._thread = threading.Thread(target=self._accept, name=f"hanging-{self.port}", daemon=True)
        self._thread.start()

    def url(self, scheme: str = "rtsp") -> str:
        return f"{scheme}://127.0.0.1:{self.port}/live"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:  # closed
                return
            self.accepted += 1
            if self._answer is not None and self.accepted == 1:
                conn.recv(4096)
                conn.sendall(self._answer)
                conn.close()
                continue
            self._held.append(conn)

    def close(self) -> None:
        self._sock.close()
        for conn in self._held:
            conn.close()

    def __enter__(self) -> HangingServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
