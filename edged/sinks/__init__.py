"""Result sinks: where results go. Each has ``start()``, ``publish(result)`` and ``close()``."""

from __future__ import annotations

from typing import Any

from .base import Sink


def make_sink(cfg: Any, stream: str, metrics: Any = None) -> Sink:
    if cfg.type == "log":
        from .log import LogSink

        return LogSink(cfg, stream)
    if cfg.type == "jsonl":
        from .jsonl import JsonlSink

        return JsonlSink(cfg, stream)
    if cfg.type == "mqtt":
        from .mqtt import MqttSink

        return MqttSink(cfg, stream, metrics)
    raise ValueError(f"unknown sink type {cfg.type!r}")


__all__ = ["Sink", "make_sink"]
