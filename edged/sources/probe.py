"""A network camera asked before OpenCV opens it: one request of our own.

Before each open the URL is asked once, without credentials (edged never sends them in
clear itself): an RTSP ``DESCRIBE`` or an HTTP ``GET``, of which only the status line is
read. A camera that does not answer is not handed to OpenCV (see :func:`preflight`); when
OpenCV then fails, the status names the cause, which OpenCV does not say: ``401`` means the
camera wants credentials (with credentials in the URL: they are wrong), ``404`` a wrong path.
"""

from __future__ import annotations

import socket
import ssl
from urllib.parse import urlsplit

from ..errors import SourceError
from .base import redact

_STATUS = {
    403: "the camera refuses access to this path (403 Forbidden): check the user's rights on the camera",
    404: "the camera has no stream at this path (404 Not Found): check the URL's path",
}


def _request(url: str) -> bytes:
    parts = urlsplit(url)
    host = parts.hostname or ""
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    if parts.scheme in ("rtsp", "rtsps"):
        bare = f"{parts.scheme}://{host}{':' + str(parts.port) if parts.port else ''}{path}"
        return f"DESCRIBE {bare} RTSP/1.0\r\nCSeq: 1\r\nAccept: application/sdp\r\n\r\n".encode()
    return f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode()


def status_of(url: str, timeout: float) -> int:
    """The status code the URL answers an anonymous request with; OSError when it does not answer."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or {"rtsp": 554, "rtsps": 322, "http": 80, "https": 443}.get(scheme, 554)
    with socket.create_connection((parts.hostname or "", port), timeout=timeout) as raw:
        sock: socket.socket = raw
        if scheme in ("rtsps", "https"):
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE  # only the status line is read; nothing secret is sent
            sock = ctx.wrap_socket(raw, server_hostname=parts.hostname)
        sock.sendall(_request(url))
        line = sock.recv(256).split(b"\r\n", 1)[0].decode("latin-1")
    fields = line.split()
    if len(fields) < 2 or not fields[1].isdigit():
        raise OSError(f"not an RTSP or HTTP answer: {line[:40]!r}")
    return int(fields[1])


def preflight(url: str, timeout: float) -> int | None:
    """Ask ``url`` before OpenCV opens it: its status code (None: it answered something else).

    OpenCV opens one capture at a time in the whole process (a lock in its FFmpeg backend),
    so a camera that accepts and never answers would hold every other open, reconnects
    included, for its whole timeout. Asked here first, in parallel, it is never handed to
    OpenCV: SourceError, and the stream tries again with backoff.
    """
    try:
        return status_of(url, timeout)
    except ConnectionRefusedError:
        raise SourceError(
            f"cannot open {redact(url)}: connection refused (is the camera on, and is this its port?)"
        ) from None
    except socket.timeout:
        raise SourceError(f"cannot open {redact(url)}: no answer within {timeout:g} s") from None
    except OSError as exc:  # closed at once, or not an RTSP/HTTP answer: let FFmpeg try it
        if isinstance(exc, socket.gaierror):
            raise SourceError(f"cannot open {redact(url)}: unknown host ({exc.strerror})") from None
        return None


def why_not_open(url: str, code: int | None) -> str:
    """The likely reason OpenCV did not open ``url``, which answered ``code`` to the preflight."""
    if code == 401:
        parts = urlsplit(url)
        if parts.password is not None or parts.username is not None:
            return "the camera refused the credentials (401 Unauthorized): check the user name and password"
        return "the camera asks for credentials (401 Unauthorized): give them in the URL (rtsp://user:password@...)"
    if code in _STATUS:
        return _STATUS[code]
    return "no video stream there (not a stream FFmpeg reads, or it stopped answering)"
