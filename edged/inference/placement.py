"""Where each stream's model runs: a pure plan (:func:`plan_placement`), then the engines
and Edge TPU workers it describes (:func:`build_engines`).

* ``accelerator: cpu``, or ``auto`` with a model that is not compiled for the Edge TPU (and
  no ``_edgetpu`` twin beside it): an in-process CPU :class:`~.local.Engine`.
* otherwise a :class:`~.failover.FailoverEngine` on the worker of the stream's device
  (``device:``, or spread round-robin over the TPUs found; one worker per device) with the
  CPU twin.
* streams that name the same entry of ``models:`` share the engine of the first of them.
* ``accelerator: edgetpu`` and the delegate does not load: :class:`AcceleratorError`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Protocol, Sequence

from ..edgetpu import EdgeTpu, default_library, list_edge_tpus, model_pair
from ..errors import AcceleratorError, WorkerFailure
from .local import Engine
from .shared import SharedEngine
from .types import InferenceEngine

if TYPE_CHECKING:  # the Edge TPU's parts (multiprocessing, the worker) are imported when a plan names them
    from ..config import Config
    from ..health import HealthBoard
    from ..metrics import Metrics
    from ..model_config import EdgeTpuConfig, ModelConfig
    from ..worker import DeviceWorker
    from .failover import FailoverEngine


class StreamModel(Protocol):
    """What placement reads of a stream: a :class:`~edged.config.StreamConfig`, or ``edged infer``'s one."""

    @property
    def id(self) -> str: ...
    @property
    def model(self) -> ModelConfig: ...
    @property
    def shared_model(self) -> Optional[str]: ...


@dataclass(frozen=True)
class Placement:
    """Where one stream's model runs."""

    stream: str
    on: str  # "cpu": an in-process engine; "edgetpu": a worker; "shared": the engine of ``owner``
    model: Path  # the model to load: the CPU model, or the Edge TPU model in the worker
    cpu_twin: Optional[Path] = None  # "edgetpu": the CPU twin loaded beside it (None: none)
    device: Optional[str] = None  # "edgetpu": the worker's label (its selector, or "default")
    selector: Optional[str] = None  # "edgetpu": the TPU selector (None: any)
    owner: Optional[str] = None  # "shared": the stream whose engine this one uses
    shared_model: Optional[str] = None  # the entry of models: this stream names (its engine is shared)


def wants_edgetpu(m: ModelConfig) -> bool:
    """Whether a model would be placed on an Edge TPU (compiled, or with a compiled twin beside it)."""
    if m.accelerator == "cpu":
        return False
    return m.accelerator == "edgetpu" or model_pair(m.path, m.cpu_model)[0] is not None


def plan_placement(streams: Sequence[StreamModel], tpus: Sequence[EdgeTpu]) -> list[Placement]:
    """One :class:`Placement` per stream, in order; starts nothing."""
    plan: list[Placement] = []
    spread = 0
    owner_of: dict[str, str] = {}  # shared model name -> the stream that builds its engine
    for s in streams:
        m = s.model
        if s.shared_model:
            if s.shared_model in owner_of:
                owner = owner_of[s.shared_model]
                plan.append(Placement(s.id, "shared", Path(m.path), owner=owner, shared_model=s.shared_model))
                continue
            owner_of[s.shared_model] = s.id
        tpu_model, cpu_model = model_pair(m.path, m.cpu_model)
        if not wants_edgetpu(m):  # accelerator: cpu runs the CPU twin of an Edge TPU model
            path = (cpu_model or m.path) if m.accelerator == "cpu" else m.path
            plan.append(Placement(s.id, "cpu", Path(path), shared_model=s.shared_model))
            continue
        selector = m.device
        if selector is None and tpus:
            selector = tpus[spread % len(tpus)].selector
            spread += 1
        tpu = Path(tpu_model or m.path)
        plan.append(Placement(s.id, "edgetpu", tpu, cpu_model, selector or "default", selector, None, s.shared_model))
    return plan


def delegate_runtime(name: str) -> str:
    """The interpreter package for the delegate: libedgetpu is built against tflite_runtime."""
    from ..runtime import available

    if name != "auto" or os.environ.get("EDGED_RUNTIME"):
        return name
    return "tflite_runtime" if "tflite_runtime" in available() else "auto"


def _workers(
    plan: list[Placement],
    models: dict[str, ModelConfig],
    tcfg: EdgeTpuConfig,
    metrics: Optional[Metrics],
    board: Optional[HealthBoard],
    tpus: Sequence[EdgeTpu] = (),
) -> tuple[dict[str, DeviceWorker], dict[str, str]]:
    """The workers the plan names, with their models registered and started; the reasons of those that
    failed (a delegate refused on a TPU another process holds open says which process)."""
    if not any(p.on == "edgetpu" and p.device is not None for p in plan):
        return {}, {}
    from ..worker import DeviceWorker

    library = tcfg.library or default_library()
    workers: dict[str, DeviceWorker] = {}
    for p in plan:
        if p.on != "edgetpu" or p.device is None:
            continue
        worker = workers.get(p.device)
        if worker is None:
            worker = workers[p.device] = DeviceWorker(
                p.device, p.selector, library, dict(tcfg.options), delegate_runtime(tcfg.runtime),
                tcfg.deadline_seconds, tcfg.probe_initial_seconds, tcfg.probe_max_seconds, metrics,
                tcfg.stable_seconds, board,
            )  # fmt: skip
        worker.register(p.stream, str(p.model), models[p.stream].threads)
    reasons: dict[str, str] = {}
    for label, worker in workers.items():
        try:
            worker.start()
        except WorkerFailure as exc:
            reasons[label] = exc.reason
            # no selector: libedgetpu opens the first TPU it enumerates
            tpu = next((t for t in tpus if worker.selector in (None, t.selector)), None)
            if exc.kind == "delegate" and tpu is not None:
                from ..doctor.holders import held_note

                reasons[label] += held_note(tpu)
    return workers, reasons


def build_engines(
    config: Config,
    metrics: Optional[Metrics],
    tpus: Optional[Sequence[EdgeTpu]] = None,
    board: Optional[HealthBoard] = None,
) -> tuple[dict[str, InferenceEngine], list[DeviceWorker]]:
    """Place every stream of ``config``, start the Edge TPU workers (their probe threads report to
    ``board``), return the engines by stream id."""
    return place_streams(config.streams, config.edgetpu, metrics, tpus, board)


def place_streams(
    streams: Sequence[StreamModel],
    tcfg: EdgeTpuConfig,
    metrics: Optional[Metrics] = None,
    tpus: Optional[Sequence[EdgeTpu]] = None,
    board: Optional[HealthBoard] = None,
) -> tuple[dict[str, InferenceEngine], list[DeviceWorker]]:
    """:func:`build_engines` for streams given alone, with the Edge TPU section (``edged infer``)."""
    found = list_edge_tpus() if tpus is None else tpus
    plan = plan_placement(streams, found)
    models = {s.id: s.model for s in streams}
    workers, reasons = _workers(plan, models, tcfg, metrics, board, found)
    engines: dict[str, InferenceEngine] = {}
    shared: dict[str, SharedEngine] = {}
    try:
        for p in plan:
            m = models[p.stream]
            if p.on == "cpu":
                engines[p.stream] = Engine.load(m, p.model)
            elif p.on == "edgetpu":
                assert p.device is not None
                engines[p.stream] = _failover(p, m, workers[p.device], reasons.get(p.device), metrics)
        for p in plan:  # the engines that several streams use take turns
            owner = p.owner or p.stream
            if p.shared_model:
                if owner not in shared:
                    shared[owner] = SharedEngine(engines[owner])
                engines[p.stream] = shared[owner]
    except BaseException:
        for worker in workers.values():
            worker.close()
        raise
    return engines, list(workers.values())


def _failover(
    p: Placement, m: ModelConfig, worker: DeviceWorker, reason: Optional[str], metrics: Optional[Metrics]
) -> FailoverEngine:
    if reason is not None and m.accelerator == "edgetpu":
        raise AcceleratorError(
            f"stream {p.stream}: accelerator is edgetpu but the Edge TPU delegate did not load ({reason})"
        )
    from .failover import FailoverEngine

    engine = FailoverEngine(p.stream, m, worker, p.cpu_twin, metrics, start_reason=reason)
    first = worker.models[p.stream].first_inference_seconds
    if first is not None and metrics is not None:
        metrics.first_inference.labels(p.stream, worker.label).set(first)
    return engine
