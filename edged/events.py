"""Results and events fanned out to Server-Sent Events clients.

Each stream gets a :class:`HubSink`; ``publish()`` (the publish thread) serialises the
result once and appends it to each subscriber's bounded deque (SSE type ``result``), and
``scene()`` does the same with each tracked object's event (SSE type ``event``). A subscriber that does not
keep up loses its oldest events (counted, and told in its next event), never the daemon's
time: the inference thread never blocks on a slow browser.
"""

from __future__ import annotations

import collections
import json
import threading
from typing import TYPE_CHECKING, Optional

from .result import Result
from .sinks.base import SceneReport, Sink

if TYPE_CHECKING:
    from .tracking import TrackEvent

SUBSCRIBER_BACKLOG = 256  # events a client may fall behind before the oldest go
TYPES = frozenset({"result", "event"})  # the SSE types a client may ask for (types=)


class Subscriber:
    def __init__(
        self, hub: EventHub, streams: Optional[frozenset[str]], backlog: int, types: frozenset[str] = TYPES
    ) -> None:
        self.hub = hub
        self.streams = streams
        self.types = types
        self.events: collections.deque[tuple[str, str, str]] = collections.deque(maxlen=backlog)  # (id, type, json)
        self.lost = 0
        self.closed = False

    def take(self, timeout: float) -> tuple[list[tuple[str, str, str]], int]:
        """The events waiting (after at most ``timeout`` s) and how many were lost before them."""
        with self.hub._cv:
            if not self.events and not self.closed and not self.hub.closed:
                self.hub._cv.wait(timeout)
            events = list(self.events)
            self.events.clear()
            lost, self.lost = self.lost, 0
        return events, lost

    def close(self) -> None:
        self.hub.unsubscribe(self)


class EventHub:
    def __init__(self, max_clients: int = 8, backlog: int = SUBSCRIBER_BACKLOG) -> None:
        self.max_clients = max_clients
        self.backlog = backlog
        self._cv = threading.Condition()
        self._subs: list[Subscriber] = []
        self.closed = False

    def subscribe(
        self, streams: Optional[frozenset[str]] = None, types: frozenset[str] = TYPES
    ) -> Optional[Subscriber]:
        """A new subscriber, or None when ``max_clients`` are connected already."""
        with self._cv:
            if len(self._subs) >= self.max_clients or self.closed:
                return None
            sub = Subscriber(self, streams, self.backlog, types)
            self._subs.append(sub)
            return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        with self._cv:
            sub.closed = True
            if sub in self._subs:
                self._subs.remove(sub)
            self._cv.notify_all()

    @property
    def clients(self) -> int:
        return len(self._subs)

    def publish(self, result: Result) -> None:
        if not self._subs:  # nobody listening: no serialisation either
            return
        self._add(result.stream, f"{result.stream}:{result.seq}", "result", result.to_json())

    def publish_event(self, stream: str, event: TrackEvent) -> None:
        if not self._subs:
            return
        data = json.dumps(event.to_dict(), separators=(",", ":"), ensure_ascii=False)
        self._add(stream, f"{stream}:event:{event.id}:{event.type}", "event", data)

    def _add(self, stream: str, eid: str, kind: str, data: str) -> None:
        with self._cv:
            for sub in self._subs:
                if (sub.streams is None or stream in sub.streams) and kind in sub.types:
                    if len(sub.events) == sub.events.maxlen:
                        sub.lost += 1
                    sub.events.append((eid, kind, data))
            self._cv.notify_all()

    def close(self) -> None:
        with self._cv:
            self.closed = True
            self._cv.notify_all()


class HubSink(Sink):
    """The stream's results into the hub (added by the service to every stream)."""

    name = "events"

    def __init__(self, hub: EventHub) -> None:
        self.hub = hub

    def publish(self, result: Result) -> None:
        self.hub.publish(result)

    def scene(self, report: SceneReport) -> None:
        for event in report.events:
            self.hub.publish_event(report.stream, event)
