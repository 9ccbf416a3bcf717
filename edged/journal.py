"""journald's native protocol: one datagram a record, its fields as the journal stores them.

https://systemd.io/JOURNAL_NATIVE_PROTOCOL/: a datagram to ``/run/systemd/journal/socket``
holds ``KEY=value\\n`` fields, or ``KEY\\n<little-endian 64-bit length><value>\\n`` for a value
with a newline (a traceback). A record too big for a datagram (``EMSGSIZE``) goes as journald
takes it: written to a sealed memfd whose descriptor is passed with ``SCM_RIGHTS``.

Written here rather than taken from python-systemd: that package builds against libsystemd's
headers (``libsystemd-dev``, a C compiler on the board) and has no wheels, and the protocol
is a few lines. A record journald cannot take (its socket gone, its queue full, an error) is
not lost: it goes to the fallback handler, the stderr line with its ``<N>`` priority.
"""

from __future__ import annotations

import array
import errno
import fcntl
import json
import logging
import os
import re
import socket
import stat
import struct
from typing import Optional

from .logs import STANDARD_ATTRS, priority

SOCKET = "/run/systemd/journal/socket"
SOCKET_ENV = "EDGED_JOURNAL_SOCKET"  # another socket (tests); set and empty: never the native protocol
SEND_TIMEOUT = 0.5  # seconds a full journal may hold a log call before its line goes to stderr
_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL
_NOT_A_NAME = re.compile(r"[^A-Z0-9_]")
_TRACEBACK = logging.Formatter()


def socket_path() -> Optional[str]:
    """journald's native socket when it is there (``$EDGED_JOURNAL_SOCKET`` instead, when set)."""
    path = os.environ.get(SOCKET_ENV, SOCKET)
    try:
        return path if path and stat.S_ISSOCK(os.stat(path).st_mode) else None
    except OSError:
        return None


def field_name(key: str) -> str:
    """An ``extra=`` key as a journal field: ``EDGED_`` and the key upper-cased, A-Z 0-9 _ only, 64 at most."""
    return ("EDGED_" + _NOT_A_NAME.sub("_", key.upper()))[:64]


def _text(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)


def record_fields(record: logging.LogRecord, exc_text: str = "") -> list[tuple[str, str]]:
    """The journal fields of a record: the human message (with its traceback), where it comes
    from, and each ``extra=`` key as ``EDGED_<KEY>`` (journald adds _PID, _COMM and the unit)."""
    message = record.getMessage() + ("\n" + exc_text if exc_text else "")
    fields = [
        ("MESSAGE", message),
        ("PRIORITY", str(priority(record.levelno))),
        ("SYSLOG_IDENTIFIER", "edged"),
        ("LOGGER", record.name),
        ("CODE_FILE", record.pathname),
        ("CODE_LINE", str(record.lineno)),
        ("CODE_FUNC", record.funcName),
        ("THREAD_NAME", str(record.threadName)),
    ]
    for key, value in vars(record).items():
        if key not in STANDARD_ATTRS and not key.startswith("_") and value is not None:
            fields.append((field_name(key), _text(value)))
    return fields


def encode(fields: list[tuple[str, str]]) -> bytes:
    out = bytearray()
    for key, value in fields:
        data = value.encode("utf-8", "replace")
        if b"\n" in data:
            out += key.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += key.encode() + b"=" + data + b"\n"
    return bytes(out)


class JournalHandler(logging.Handler):
    """Sends each record to journald's native socket at ``path``; ``fallback`` gets what it cannot."""

    def __init__(self, path: str, fallback: logging.Handler) -> None:
        super().__init__()
        self.path = path
        self.fallback = fallback
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:  # as sd-journal does: room for bigger datagrams (capped by net.core.wmem_max)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
        except OSError:
            pass
        self.sock.settimeout(SEND_TIMEOUT)
        self.sent = self.fell_back = 0  # records journald took, records that went to the fallback

    def emit(self, record: logging.LogRecord) -> None:
        try:
            exc_text = _TRACEBACK.formatException(record.exc_info) if record.exc_info else ""
            self._send(encode(record_fields(record, exc_text)))
            self.sent += 1
        except Exception:  # the socket gone, ENOBUFS, a timeout, a record that cannot be encoded
            self.fell_back += 1
            self.fallback.handle(record)

    def _send(self, data: bytes) -> None:
        """unconnected, so a restarted journald (a new socket at the same path) is found again."""
        try:
            self.sock.sendto(data, self.path)
        except OSError as exc:
            if exc.errno != errno.EMSGSIZE:
                raise
            self._send_memfd(data)

    def _send_memfd(self, data: bytes) -> None:
        fd = os.memfd_create("edged-journal", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)  # journald takes a sealed memfd only
            rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))]
            self.sock.sendmsg([], rights, 0, self.path)
        finally:
            os.close(fd)

    def close(self) -> None:
        self.sock.close()
        self.fallback.close()
        super().close()
