from __future__ import annotations

from ..result import Result


class Sink:
    """A place results go. ``publish`` must not block the inference thread for long."""

    name = "sink"

    def start(self) -> None:
        pass

    def publish(self, result: Result) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def close(self) -> None:
        pass
