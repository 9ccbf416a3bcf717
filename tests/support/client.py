"""HTTP calls to a daemon's listener, as a client makes them: urllib, or a raw socket."""

from __future__ import annotations

import re
import socket
import subprocess
import urllib.error
import urllib.request
from typing import Optional

Samples = dict[tuple[str, tuple], float]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(
    base: str, path: str, token: Optional[str] = None, timeout: float = 5.0, method: str = "GET"
) -> tuple[int, dict, bytes]:
    """(status, headers, body) of ``method base+path``; an HTTP error is an answer, not an exception.

    Raises OSError when nothing answers."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    req = urllib.request.Request(base + path, headers=headers, method=method, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def raw(port: int, data: bytes, host: str = "127.0.0.1") -> tuple[int, bytes]:
    """Send ``data`` as is; the status code and body of the answer."""
    with socket.create_connection((host, port), 5) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            b = s.recv(65536)
            if not b:
                break
            chunks.append(b)
    reply = b"".join(chunks)
    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def scrape(port: int, timeout: float = 5.0, host: str = "127.0.0.1") -> Samples:
    """Every sample of one scrape of a daemon's /metrics, by (name, sorted labels).

    Raises OSError when the daemon does not answer."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=timeout) as r:
        text = r.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def sample(samples: Samples, name: str, **labels: str) -> float:
    """The value of one sample of a scrape, which must be there."""
    key = (name, tuple(sorted(labels.items())))
    assert key in samples, f"no sample {name}{labels}"
    return samples[key]


def non_loopback_address() -> str:
    """An address of this machine that is not loopback (0.0.0.0 if it has none)."""
    try:
        out = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.TimeoutExpired):
        out = ""
    for addr in re.findall(r"inet (\d+\.\d+\.\d+\.\d+)/", out):
        if not addr.startswith("127."):
            return addr
    return "0.0.0.0"
