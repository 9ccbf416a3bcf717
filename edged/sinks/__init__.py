"""Result sinks: where results go. Each has ``start()``, ``publish(result)`` and ``close()``."""

from __future__ import annotations

from typing import Any

from .base import Sink, SinkContext


def make_sink(cfg: Any, ctx: SinkContext) -> Sink:
    if cfg.type == "log":
        from .log import LogSink

        return LogSink(cfg, ctx.stream)
    if cfg.type == "jsonl":
        from .jsonl import JsonlSink

        return JsonlSink(cfg, ctx.stream)
    if cfg.type == "mqtt":
        from .mqtt import MqttSink

        return MqttSink(cfg, ctx)
    raise ValueError(f"unknown sink type {cfg.type!r}")


__all__ = ["Sink", "SinkContext", "make_sink"]
