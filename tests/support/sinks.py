"""A sink for in-process streams: it keeps every result it is given."""

from __future__ import annotations

from edged.result import Result
from edged.sinks.base import Sink


class Collect(Sink):
    """A sink that keeps every result it is given."""

    name = "collect"

    def __init__(self) -> None:
        self.results: list[Result] = []

    def publish(self, result: Result) -> None:
        self.results.append(result)

    def since(self, t: float) -> list[Result]:
        return [r for r in list(self.results) if r.timestamp >= t]
