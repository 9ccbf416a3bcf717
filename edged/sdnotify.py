"""The systemd notification protocol (sd_notify(3)), without libsystemd.

``NOTIFY_SOCKET`` names a unix datagram socket (a path, or ``@name`` in the abstract
namespace); each message is newline-separated ``KEY=VALUE`` lines: ``READY=1``,
``STATUS=...``, ``WATCHDOG=1``, ``RELOADING=1``, ``STOPPING=1``. Outside systemd (no
``NOTIFY_SOCKET``) every call does nothing. ``WATCHDOG_USEC`` (and ``WATCHDOG_PID``, when
set, naming this process) gives the watchdog interval.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Mapping, Optional

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, environ: Optional[Mapping[str, str]] = None) -> None:
        env = os.environ if environ is None else environ
        addr = env.get("NOTIFY_SOCKET") or None
        self.address: Optional[str] = None
        if addr is not None:
            if addr.startswith("@"):
                addr = "\0" + addr[1:]
            elif not addr.startswith("/"):
                log.warning("NOTIFY_SOCKET=%r is neither a path nor @abstract: not notifying systemd", addr)
                addr = None
        self.address = addr
        self.watchdog_seconds: Optional[float] = None
        usec, pid = env.get("WATCHDOG_USEC"), env.get("WATCHDOG_PID")
        if usec and (not pid or pid == str(os.getpid())):
            try:
                self.watchdog_seconds = int(usec) / 1e6 if int(usec) > 0 else None
            except ValueError:
                log.warning("WATCHDOG_USEC=%r is not a number: no watchdog", usec)
        self._sock: Optional[socket.socket] = None
        self._failed = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, **fields: object) -> bool:
        """Send ``KEY=VALUE`` lines (``ready=1`` becomes ``READY=1``); True when sent."""
        if self.address is None:
            return False
        msg = "\n".join(f"{k.upper()}={v}" for k, v in fields.items()).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(msg, self.address)
            self._failed = False
            return True
        except OSError as exc:
            if not self._failed:  # said once per failure streak, not at every watchdog ping
                self._failed = True
                log.warning("cannot notify systemd at %s: %s", self.address.replace("\0", "@"), exc)
            return False

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
