"""Debian's mosquitto in a child process, on loopback: an MQTT broker a test stops and starts again."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path

from support.tools import require_tool
from support.wait import wait_for


class Broker:
    """mosquitto in the foreground on 127.0.0.1:port; its sessions persist across stop/start.

    Its files are in ``tmp/broker``: ``mosquitto.conf``, the persistence file and ``log``
    (appended to by every start). Without mosquitto the test skips (fails with EDGED_REQUIRE_TOOLS=1).
    """

    def __init__(self, tmp: Path, port: int, extra: list[str] | None = None) -> None:
        """``extra``: more configuration lines (more listeners: then ``per_listener_settings true`` first)."""
        self.binary = require_tool("mosquitto", "mosquitto")
        self.port = port
        self.dir = tmp / "broker"
        self.dir.mkdir(exist_ok=True)
        self.conf = self.dir / "mosquitto.conf"
        lines = [
            *(["per_listener_settings true"] if extra else []),
            "persistence true",
            f"persistence_location {self.dir}/",
            "max_queued_messages 100000",
            "log_dest stderr",
            f"listener {port} 127.0.0.1",
            "allow_anonymous true",
            *(extra or []),
        ]
        if os.geteuid() == 0:
            lines.append("user root")  # stay root: the persistence directory is the test's
        self.conf.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        """Start it and wait until it accepts connections (fails at once if it exits, with its log)."""
        with (self.dir / "log").open("ab") as log:  # the child has its own copy
            self.proc = subprocess.Popen(
                [self.binary, "-c", str(self.conf)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log
            )

        def accepting() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self.log()
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return True
            except OSError:
                return False

        wait_for(accepting, 10, "mosquitto to listen", interval=0.1)

    def log(self) -> str:
        """Everything it logged so far, over every start."""
        return (self.dir / "log").read_text(errors="replace")

    def stop(self) -> None:
        """SIGTERM (it saves its sessions), SIGKILL after 5 s. Idempotent."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def password_file(path: Path, user: str, password: str) -> Path:
    """A mosquitto password file (``password_file``) with one user, made by mosquitto_passwd."""
    mosquitto_passwd = require_tool("mosquitto_passwd", "mosquitto")
    subprocess.run([mosquitto_passwd, "-c", "-b", str(path), user, password], check=True, capture_output=True)
    path.chmod(0o600)
    return path
