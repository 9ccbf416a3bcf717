"""Small helpers shared by the tests (imported as ``from helpers import ...``)."""

from __future__ import annotations

import time
from typing import Any, Callable

from edged.result import Result
from edged.sinks.base import Sink


def wait_for(pred: Callable[[], Any], timeout: float, what: str, interval: float = 0.02) -> Any:
    """Poll ``pred`` until it returns something truthy (returned), or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Collect(Sink):
    """A sink that keeps every result it is given."""

    name = "collect"

    def __init__(self) -> None:
        self.results: list[Result] = []

    def publish(self, result: Result) -> None:
        self.results.append(result)

    def since(self, t: float) -> list[Result]:
        return [r for r in list(self.results) if r.timestamp >= t]


def scrape(port: int, timeout: float = 5.0) -> dict[tuple[str, tuple], float]:
    """Every sample of one scrape of a daemon's /metrics, by (name, sorted labels).

    Raises OSError when the daemon does not answer.
    """
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as r:
        text = r.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }
