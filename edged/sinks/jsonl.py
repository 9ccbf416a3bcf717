"""Every result as one JSON object per line, appended to a file."""

from __future__ import annotations

from pathlib import Path
from typing import IO, Any

from ..errors import ConfigError
from ..result import Result
from .base import Sink


class JsonlSink(Sink):
    name = "jsonl"

    def __init__(self, cfg: Any, stream: str) -> None:
        self.path = Path(cfg.path)
        self.stream = stream
        self._fh: IO[str] | None = None

    def start(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = self.path.open("a", encoding="utf-8", buffering=1)  # line buffered
        except OSError as exc:
            raise ConfigError(f"stream {self.stream}: cannot open jsonl sink {self.path}: {exc.strerror}") from None

    def publish(self, result: Result) -> None:
        assert self._fh is not None, "start() first"
        self._fh.write(result.to_json() + "\n")

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
