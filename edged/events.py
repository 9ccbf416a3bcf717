"""Results fanned out to Server-Sent Events clients.

Each stream gets a :class:`HubSink`; ``publish()`` (the inference thread) serialises the
result once and appends it to each subscriber's bounded deque. A subscriber that does not
keep up loses its oldest events (counted, and told in its next event), never the daemon's
time: the inference thread never blocks on a slow browser.
"""

from __future__ import annotations

import collections
import threading
from typing import Optional

from .result import Result
from .sinks.base import Sink

SUBSCRIBER_BACKLOG = 256  # events a client may fall behind before the oldest go


class Subscriber:
    def __init__(self, hub: EventHub, streams: Optional[frozenset[str]], backlog: int) -> None:
        self.hub = hub
        self.streams = streams
        self.events: collections.deque[tuple[str, str]] = collections.deque(maxlen=backlog)  # (id, json)
        self.lost = 0
        self.closed = False

    def take(self, timeout: float) -> tuple[list[tuple[str, str]], int]:
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

    def subscribe(self, streams: Optional[frozenset[str]] = None) -> Optional[Subscriber]:
        """A new subscriber, or None when ``max_clients`` are connected already."""
        with self._cv:
            if len(self._subs) >= self.max_clients or self.closed:
                return None
            sub = Subscriber(self, streams, self.backlog)
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
        data = result.to_json()
        eid = f"{result.stream}:{result.seq}"
        with self._cv:
            for sub in self._subs:
                if sub.streams is None or result.stream in sub.streams:
                    if len(sub.events) == sub.events.maxlen:
                        sub.lost += 1
                    sub.events.append((eid, data))
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
