"""``python -m edged run`` in a subprocess, observed from outside as an operator would.

One wrapper for every test that runs the daemon: its configuration (a dict written to
``edged.yaml``, or a file), its extra arguments, its environment; stdout and stderr go to
files (no pipe can fill up) that stay readable after it exits; its listener's address is
read from the configuration or ``--listen`` for the HTTP helpers.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import yaml

from support.client import Samples, get, scrape
from support.wait import wait_for

ROOT = Path(__file__).resolve().parents[2]


class Daemon:
    """``python -m edged run [--config CFG] [--listen LISTEN] ARGS...``, started at once.

    - ``tmp``: the folder of its files: ``edged.yaml`` (when ``config`` is a dict),
      ``edged.stdout``, ``edged.stderr`` (appended to: a daemon started again on the same
      folder adds to the log); also its working directory unless ``cwd`` is given;
    - ``config``: a dict (written as YAML), a path, or None (the embedded demo);
    - ``listen``: given as ``--listen``; otherwise the configuration's ``listen`` is used
      to find the listener (``base``, ``port``);
    - ``env``: added to this process's environment.
    """

    def __init__(
        self,
        tmp: Path,
        config: dict[str, Any] | Path | str | None = None,
        args: Sequence[Any] = (),
        *,
        listen: str | None = None,
        env: Optional[Mapping[str, str]] = None,
        cwd: Path | None = None,
        stderr: Path | None = None,
    ) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        self.cfg: Path | None = None
        address = listen
        if isinstance(config, dict):
            self.cfg = tmp / "edged.yaml"
            self.cfg.write_text(yaml.safe_dump(config))
            address = address or config.get("listen")
        elif config is not None:
            self.cfg = Path(config)
            if address is None:
                try:
                    loaded = yaml.safe_load(self.cfg.read_text())  # JSON is YAML too
                except (OSError, yaml.YAMLError):  # a test of a broken or missing file
                    loaded = None
                address = loaded.get("listen") if isinstance(loaded, dict) else None
        argv: list[str] = [sys.executable, "-m", "edged", "run"]
        if self.cfg is not None:
            argv += ["--config", str(self.cfg)]
        if listen is not None:
            argv += ["--listen", listen]
        argv += [str(a) for a in args]
        self.host, self.port = _address(address)
        self.stdout_path = tmp / "edged.stdout"
        self.err_path = stderr or tmp / "edged.stderr"
        with self.stdout_path.open("ab") as out, self.err_path.open("ab") as err:  # the child has its own copies
            self.proc = subprocess.Popen(
                argv,
                cwd=cwd or tmp,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env={**os.environ, **(env or {})},
            )

    # ---------------------------------------------------------------- the process
    @property
    def stderr(self) -> str:
        """Everything it logged so far."""
        return self.err_path.read_text(errors="replace")

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def assert_running(self) -> None:
        assert self.proc.poll() is None, f"edged exited early ({self.proc.returncode}):\n{self.stderr}"

    def wait(self, timeout: float) -> int:
        """Its exit code once it exits by itself (subprocess.TimeoutExpired after ``timeout``)."""
        return self.proc.wait(timeout)

    def send(self, sig: int) -> None:
        """Send a signal (SIGHUP: reload)."""
        self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Send ``sig`` (if it still runs), wait up to ``timeout`` s, then SIGKILL. Its exit code. Idempotent."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL if it still runs (the cleanup of a test that failed half-way)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    # ---------------------------------------------------------------- the listener
    @property
    def base(self) -> str:
        assert self.port, "this daemon's listener is not known (no listen address, or port 0)"
        return f"http://{self.host}:{self.port}"

    def get(self, path: str, token: Optional[str] = None, timeout: float = 5.0) -> tuple[int, dict, bytes]:
        return get(self.base, path, token, timeout)

    def ok(self, path: str, token: Optional[str] = None) -> bool:
        """``path`` answers 200 (False while nothing answers); fails if the daemon has exited."""
        self.assert_running()
        try:
            return self.get(path, token, timeout=1)[0] == 200
        except OSError:
            return False

    def wait_ready(self, token: Optional[str] = None, timeout: float = 60.0) -> None:
        """Until /readyz answers 200; fails at once if the daemon exits meanwhile."""
        wait_for(lambda: self.ok("/readyz", token), timeout, "the daemon to be ready")

    def wait_healthy(self, timeout: float = 20.0) -> dict[str, Any]:
        """Until /healthz answers 200; its body."""

        def probe() -> dict[str, Any] | None:
            self.assert_running()
            try:
                code, _, body = self.get("/healthz", timeout=1)
            except OSError:
                return None
            return json.loads(body) if code == 200 else None

        return wait_for(probe, timeout, "/healthz 200", interval=0.05)

    def healthz(self) -> int:
        return self.get("/healthz", timeout=3)[0]

    def status(self) -> dict[str, Any]:
        code, _, body = self.get("/api/v1/status", timeout=3)
        assert code == 200, (code, body)
        return json.loads(body)

    def metrics(self) -> Samples:
        """Every sample of one scrape of /metrics, by (name, sorted labels); empty if it does not answer."""
        try:
            return scrape(self.port, host=self.host)
        except OSError:
            return {}

    def value(self, name: str, **labels: str) -> float:
        """One sample of a scrape; -1 when it is not there (or the daemon does not answer)."""
        return self.metrics().get((name, tuple(sorted(labels.items()))), -1.0)


def _address(listen: str | None) -> tuple[str, int]:
    """(host to connect to, port) of a listen address; port 0 when unknown."""
    if not listen or ":" not in str(listen):
        return "127.0.0.1", 0
    host, _, port = str(listen).rpartition(":")
    host = host.strip("[]")
    return ("127.0.0.1" if host in ("", "0.0.0.0") else host), int(port)
