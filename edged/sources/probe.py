"""Why a network camera did not open: one request of our own, since OpenCV only says "no".

After a failed open the URL is asked once more, without credentials (they are never sent
in clear by edged itself): an RTSP ``DESCRIBE`` or an HTTP ``GET``, and the status line of
the answer names the cause: ``401`` means the camera wants credentials (with credentials in
the URL: they are wrong), ``404`` a wrong path; a refused or silent socket says so.
"""

from __future__ import annotations

import socket
import ssl
from urllib.parse import urlsplit

PROBE_SECONDS = 2.0  # at most, on top of the failed open

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


def status_of(url: str, timeout: float = PROBE_SECONDS) -> int:
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


def why_not_open(url: str, open_timeout: float) -> str:
    """The likely reason an open of ``url`` failed, in a few words for the log."""
    try:
        code = status_of(url, min(PROBE_SECONDS, open_timeout))
    except ConnectionRefusedError:
        return "connection refused (is the camera on, and is this its port?)"
    except socket.timeout:
        return f"no answer within {open_timeout:g} s"
    except OSError:
        return "no answer, refused, or not a video stream"
    if code == 401:
        if urlsplit(url).password is not None or urlsplit(url).username is not None:
            return "the camera refused the credentials (401 Unauthorized): check the user name and password"
        return "the camera asks for credentials (401 Unauthorized): give them in the URL (rtsp://user:password@...)"
    return _STATUS.get(code, f"the camera answered {code} but no video stream opened")
