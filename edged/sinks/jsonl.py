"""Every result as one JSON object per line, appended to a file."""

from __future__ import annotations

from pathlib import Path
from typing import IO, Literal

from pydantic import Field

from ..errors import ConfigError
from ..registry import SINKS, StrictConfig
from ..result import Result
from .base import Sink, SinkContext


class JsonlSinkConfig(StrictConfig):
    """Append every result as one JSON object per line to a file."""

    type: Literal["jsonl"] = "jsonl"
    path: str = Field(description="file to append to; its directory is created")


class JsonlSink(Sink):
    name = "jsonl"

    def __init__(self, cfg: JsonlSinkConfig, stream: str) -> None:
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


def _make(cfg: JsonlSinkConfig, ctx: SinkContext) -> JsonlSink:
    return JsonlSink(cfg, ctx.stream)


SINKS.register("jsonl", JsonlSinkConfig, _make)
