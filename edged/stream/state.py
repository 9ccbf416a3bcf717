"""A stream's states, and the one classification of a stream that every view uses.

:class:`StreamState` is the life of the stream's threads, :class:`SourceState` the life of
its source; :func:`phase` combines them with "has it produced a result yet" into the one
answer that health, readiness, the systemd STATUS line, the MQTT summary and the HTTP
status each present in their own words.
"""

from __future__ import annotations

import time
from enum import Enum
from typing import Iterable, Protocol


class _Named(str, Enum):
    """An enum whose members are their names in JSON, logs and f-strings (``"running"``)."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)


class StreamState(_Named):
    CREATED = "created"
    RUNNING = "running"
    ENDED = "ended"  # its finite source ended
    FAILED = "failed"  # one of its threads crashed
    STOPPED = "stopped"  # closed by the daemon

    @property
    def finished(self) -> bool:
        return self in (StreamState.ENDED, StreamState.FAILED, StreamState.STOPPED)


class SourceState(_Named):
    CREATED = "created"
    UP = "up"
    OPENING = "opening"  # a live source's first open, under way in the capture thread (its phase: starting)
    CONNECTING = "connecting"  # a live source being opened again, with backoff


class Phase(_Named):
    """Where a stream is, as the daemon's views tell it."""

    FAILED = "failed"
    ENDED = "ended"
    STOPPED = "stopped"
    WAITING_FOR_SOURCE = "waiting for its source"
    STARTING = "starting"  # running, no result yet
    PRODUCING = "producing"  # running, results coming


class StreamLike(Protocol):
    @property
    def state(self) -> StreamState: ...

    @property
    def source_state(self) -> SourceState: ...

    def has_result(self) -> bool: ...


def phase(stream: StreamLike) -> Phase:
    """The one classification of a stream (a crashed thread wins over everything)."""
    state = stream.state
    if state is StreamState.FAILED:
        return Phase.FAILED
    if state is StreamState.ENDED:
        return Phase.ENDED
    if state is StreamState.STOPPED:
        return Phase.STOPPED
    if stream.source_state is SourceState.CONNECTING:
        return Phase.WAITING_FOR_SOURCE  # at start, or a live source lost after results
    if stream.has_result():
        return Phase.PRODUCING
    return Phase.STARTING


def rate(times: Iterable[float], window: float = 5.0) -> float:
    """Results a second over the last ``window`` seconds, from their monotonic times."""
    now = time.monotonic()
    recent = [t for t in list(times) if now - t <= window]
    if len(recent) < 2:
        return 0.0
    span = max(now - recent[0], recent[-1] - recent[0])
    return (len(recent) - 1) / span if span > 0 else 0.0
