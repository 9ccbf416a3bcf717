"""A stream built from its configuration: its source, its sinks and its engine."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Sequence

from ..inference import Engine, InferenceEngine
from ..metrics import Metrics
from ..sinks import Sink, SinkContext, make_sink
from ..sources import make_source
from ..stream import Stream

if TYPE_CHECKING:
    from ..config import StreamConfig
    from ..health import HealthBoard
    from ..sinks.mqtt import MqttPool


def build_stream(
    cfg: StreamConfig,
    metrics: Metrics,
    engine: Optional[InferenceEngine] = None,
    extra_sinks: Sequence[Sink] = (),
    mqtt: Optional[MqttPool] = None,
    health: Optional[HealthBoard] = None,
) -> Stream:
    """The stream ``cfg`` describes, not started; without ``engine``, its model on the CPU in this
    process; its mqtt sinks connect through ``mqtt`` (the service's pool; None: one of their own)."""
    ctx = SinkContext(cfg.id, metrics, mqtt, health)
    sinks = [make_sink(s, ctx) for s in cfg.sinks] + list(extra_sinks)
    engine = engine if engine is not None else Engine.load(cfg.model)
    return Stream(cfg, engine, make_source(cfg.source, cfg.id), sinks, metrics.stream(cfg.id))
