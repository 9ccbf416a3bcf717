"""A stream's detection switch: on, the stream infers; off, its camera stays open and nothing is inferred.

Switched by a command (MQTT ``<prefix>/<device>/<stream>/detect/set``, which Home Assistant's
switch sends); it starts as the configuration says (``detect:``) at
every start. Whoever shows the state watches it (:meth:`watch`).
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

log = logging.getLogger("edged.pipeline")


class DetectSwitch:
    def __init__(self, stream: str, on: bool = True) -> None:
        self.stream = stream
        self._on = on
        self._lock = threading.Lock()
        self._watchers: list[Callable[[bool], None]] = []

    @property
    def on(self) -> bool:
        return self._on

    def set(self, on: bool, by: str) -> bool:
        """Switch detection on or off; whether that changed anything. Watchers are told either way
        (a command is answered with the state, changed or not)."""
        with self._lock:
            changed, self._on = self._on != on, on
            watchers = list(self._watchers)
        if changed:
            log.info(
                "stream %s: detection switched %s (%s)",
                self.stream,
                "on" if on else "off",
                by,
                extra={"stream": self.stream},
            )
        for fn in watchers:
            try:
                fn(on)
            except Exception as exc:  # a watcher must not stop the switch
                log.warning(
                    "stream %s: telling of the detection switch failed: %s",
                    self.stream,
                    exc,
                    extra={"stream": self.stream},
                )
        return changed

    def watch(self, fn: Callable[[bool], None]) -> None:
        with self._lock:
            self._watchers.append(fn)

    def unwatch(self, fn: Callable[[bool], None]) -> None:
        with self._lock:
            self._watchers = [w for w in self._watchers if w is not fn]
