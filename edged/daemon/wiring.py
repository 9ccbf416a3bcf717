"""A stream built from its configuration: its source, its sinks and its engine."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

from ..inference import Engine, InferenceEngine
from ..labels import read_labels
from ..metrics import Metrics
from ..sinks import SceneDescription, Sink, SinkContext, make_sink
from ..sources import make_source
from ..stream import Stream
from ..stream.switch import DetectSwitch

log = logging.getLogger("edged.pipeline")

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
    switch = DetectSwitch(cfg.id, cfg.detect)
    engine = engine if engine is not None else Engine.load(cfg.model)
    ctx = SinkContext(cfg.id, metrics, mqtt, health, switch, describe_scene(cfg, engine.info.task))
    scene = None
    if engine.info.task == "detection":
        from ..stream.scene import StreamScene
        from ..tracking import SnapshotStore

        ev = cfg.events
        store = SnapshotStore(
            snapshot_dir(), ev.snapshot_max_files, int(ev.snapshot_max_megabytes * 1_000_000),
            ev.snapshot_max_age_hours * 3600.0, stream=cfg.id,
        )  # fmt: skip
        scene = StreamScene(cfg, store)
    sinks = [make_sink(s, ctx) for s in cfg.sinks] + list(extra_sinks)
    return Stream(cfg, engine, make_source(cfg.source, cfg.id), sinks, metrics.stream(cfg.id), switch, scene)


ENTITY_LABELS_MAX = 10  # a model with more labels gets entities per label only for those objects.track lists


def describe_scene(cfg: StreamConfig, task: str) -> Optional[SceneDescription]:
    """A detector stream's labels and zones as Home Assistant's entities show them: the labels
    ``objects.track`` lists, else the model's own when it has at most 10 (else none: the
    frame's and each zone's occupancy of any label)."""
    if task != "detection":
        return None
    labels = list(cfg.objects.track or [])
    if not labels and cfg.model.labels:
        names = list(dict.fromkeys(read_labels(cfg.model.labels).values()))
        if len(names) <= ENTITY_LABELS_MAX:
            labels = names
        else:
            log.info(
                "stream %s: %d labels: occupancy per label only for those objects.track lists (e.g. track: [person])",
                cfg.id, len(names), extra={"stream": cfg.id},
            )  # fmt: skip
    zones = {name: tuple(z.labels or ()) for name, z in cfg.zones.items()}
    return SceneDescription(tuple(labels), zones)


def snapshot_dir() -> Path:
    """Where the events' snapshots go: ``$STATE_DIRECTORY/snapshots`` (systemd), else ~/.local/state/edged/snapshots."""
    state = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    base = Path(state) if state else Path.home() / ".local" / "state" / "edged"
    return base / "snapshots"
