"""A sink for in-process streams: it keeps every result and every scene report it is given."""

from __future__ import annotations

from edged.result import Result
from edged.sinks.base import SceneReport, Sink


class Collect(Sink):
    """A sink that keeps every result it is given."""

    name = "collect"

    def __init__(self) -> None:
        self.results: list[Result] = []
        self.scenes: list[SceneReport] = []

    def publish(self, result: Result) -> None:
        self.results.append(result)

    def scene(self, report: SceneReport) -> None:
        self.scenes.append(report)

    def events(self) -> list:
        """Every event of the scene reports, in order."""
        return [e for r in list(self.scenes) for e in r.events]

    def since(self, t: float) -> list[Result]:
        return [r for r in list(self.results) if r.timestamp >= t]
