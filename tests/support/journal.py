"""A stand-in for journald's native socket: a unix datagram socket bound in a test's directory,
whose datagrams (or memfds passed with SCM_RIGHTS) are parsed as journald parses them."""

from __future__ import annotations

import array
import fcntl
import os
import socket
import struct
from pathlib import Path
from typing import Optional


def parse(data: bytes) -> dict[str, str]:
    """One entry of the native protocol: ``KEY=value\\n`` or ``KEY\\n<le64 length><value>\\n``."""
    fields: dict[str, str] = {}
    i = 0
    while i < len(data):
        nl = data.index(b"\n", i)
        line = data[i:nl]
        if b"=" in line:
            key, _, value = line.partition(b"=")
            i = nl + 1
        else:
            key = line
            (n,) = struct.unpack("<Q", data[nl + 1 : nl + 9])
            value = data[nl + 9 : nl + 9 + n]
            assert data[nl + 9 + n : nl + 10 + n] == b"\n", "a binary field not ended by a newline"
            i = nl + 10 + n
        name = key.decode()
        assert name and name[0] != "_" and not name[0].isdigit() and len(name) <= 64, name
        assert all(c.isupper() or c.isdigit() or c == "_" for c in name), name
        assert name not in fields, f"{name} twice"
        fields[name] = value.decode()
    return fields


class FakeJournal:
    """Bound at ``path``; ``entries()`` returns what arrived so far, parsed (a memfd read as journald does)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.memfds = 0
        self.received: list[dict[str, str]] = []

    def _one(self) -> Optional[bytes]:
        fds = array.array("i")
        try:
            data, anc, _, _ = self.sock.recvmsg(1 << 20, socket.CMSG_SPACE(4 * fds.itemsize))
        except BlockingIOError:
            return None
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
        if fds:
            assert not data and len(fds) == 1
            self.memfds += 1
            seals = fcntl.fcntl(fds[0], fcntl.F_GET_SEALS)
            assert seals & fcntl.F_SEAL_WRITE and seals & fcntl.F_SEAL_SHRINK, "journald refuses an unsealed memfd"
            with os.fdopen(fds[0], "rb") as f:
                f.seek(0)  # the sender's offset is at the end, and journald reads from the start too
                return f.read()
        return data

    def entries(self) -> list[dict[str, str]]:
        while (data := self._one()) is not None:
            self.received.append(parse(data))
        return self.received

    def close(self) -> None:
        self.sock.close()
