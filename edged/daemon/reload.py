"""Reload (SIGHUP): a pure plan of what changes (:func:`plan_reload`), then its application
(:func:`apply_reload`) with one way back when the new configuration cannot start.

Streams whose section changed are rebuilt, new ones started, removed ones stopped, the rest
keep running. Streams that share an engine with a changed one are rebuilt with it. One
worker process owns each Edge TPU: when a stream on a TPU changes, every stream is rebuilt,
so the workers can be closed and started again with the new set. Keys a running daemon
cannot change (the listener, the TPU set-up, logging) are kept and named in a warning.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Optional

from ..config import Config, StreamConfig
from ..errors import EdgedError
from ..inference import InferenceEngine
from ..inference.placement import build_engines, wants_edgetpu
from ..stream import Stream

if TYPE_CHECKING:
    from ..worker import DeviceWorker
    from .service import Service

log = logging.getLogger("edged.service")

# keys a reload cannot change in a running daemon (the listener, the TPU set-up, logging)
RESTART_KEYS = ("device", "listen", "http", "log", "edgetpu")


@dataclass(frozen=True)
class ReloadPlan:
    config: Config  # what runs after the reload (the keys a reload cannot change kept from the old one)
    ignored: tuple[str, ...]  # keys that changed but take effect at the next restart
    restart: tuple[str, ...]  # streams rebuilt, in the new configuration's order
    start: tuple[str, ...]  # new streams
    stop: tuple[str, ...]  # removed streams
    all_streams: bool  # an Edge TPU stream changed: everything is rebuilt, the workers restarted

    @property
    def unchanged(self) -> bool:
        return not (self.restart or self.start or self.stop)

    @property
    def build(self) -> tuple[str, ...]:
        """The streams built from the new configuration, in its order."""
        order = set(self.restart) | set(self.start)
        return tuple(s.id for s in self.config.streams if s.id in order)

    def describe(self) -> str:
        parts = [("restarting", self.restart), ("starting", self.start), ("stopping", self.stop)]
        return "; ".join(f"{verb} {', '.join(ids)}" for verb, ids in parts if ids)


def plan_reload(old: Config, new: Config, on_tpu: Iterable[str] = (), keep_listen: bool = False) -> ReloadPlan:
    """What a reload from ``old`` to ``new`` does; ``on_tpu``: the running streams that use an Edge
    TPU worker; ``keep_listen``: the listener came from the command line (its key is not ignored)."""
    ignored = [k for k in RESTART_KEYS if getattr(new, k) != getattr(old, k)]
    if keep_listen and "listen" in ignored:
        ignored.remove("listen")
    if ignored:
        new = new.model_copy(update={k: getattr(old, k) for k in RESTART_KEYS})
    old_by = {s.id: s for s in old.streams}
    new_by = {s.id: s for s in new.streams}
    changed = {sid for sid, sc in new_by.items() if old_by.get(sid) != sc}
    removed = set(old_by) - set(new_by)
    # streams that share an engine with a changed one are rebuilt with it
    touched: list[StreamConfig] = [old_by[s] for s in changed | removed if s in old_by]
    touched += [new_by[s] for s in changed]
    shared = {c.shared_model for c in touched if c.shared_model}
    changed |= {sid for sid, sc in new_by.items() if sc.shared_model in shared}
    removed |= {sid for sid, sc in old_by.items() if sc.shared_model in shared and sid not in new_by}
    tpus = set(on_tpu)
    everything = bool(changed or removed) and (
        any(wants_edgetpu(new_by[s].model) for s in changed) or bool((changed | removed) & tpus)
    )
    if everything:
        changed, removed = set(new_by), set(old_by)
    order = [sc.id for sc in new.streams if sc.id in changed]
    return ReloadPlan(
        config=new,
        ignored=tuple(ignored),
        restart=tuple(s for s in order if s in old_by),
        start=tuple(s for s in order if s not in old_by),
        stop=tuple(sorted(removed - changed)),
        all_streams=everything,
    )


def apply_reload(service: Service, plan: ReloadPlan) -> None:
    """Run ``plan``; raises EdgedError (with the old configuration running again) when it cannot."""
    if plan.ignored:
        log.warning("reload: %s changed; that takes effect at the next restart", ", ".join(plan.ignored))
    if plan.unchanged:
        log.info("reload: no stream changed")
        service.config = plan.config
        return
    old = service.config
    affected = [s for s in service.streams if s.id in set(plan.restart) | set(plan.stop)]
    stopped = plan.all_streams
    if stopped:  # the workers must let go of the TPUs before new ones open them
        service.stop_streams(affected)
        service.close_workers()
    started: list[Stream] = []
    workers: list[DeviceWorker] = []
    try:
        sub = plan.config.model_copy(update={"streams": [s for s in plan.config.streams if s.id in plan.build]})
        engines, workers = build_engines(sub, service.metrics, service.tpus, service.board)
        fresh = [service.build_stream(sc, engines[sc.id]) for sc in sub.streams]
        log.info("reload: %s", plan.describe())
        if not stopped:
            service.stop_streams(affected)
            stopped = True
        for sid in set(plan.restart) | set(plan.start) | set(plan.stop):
            service.metrics.remove_stream(sid, keep_counters=sid not in plan.stop)
        for st in fresh:
            st.start()
            started.append(st)
    except EdgedError:
        service.stop_streams(started)
        for w in workers:
            w.close()
        if stopped:  # put back what was running
            _restore(service, old, affected, plan.all_streams)
        raise
    kept = {s.id: s for s in service.streams if s not in affected}
    by_id = {**kept, **{s.id: s for s in fresh}}
    service.streams = [by_id[sc.id] for sc in plan.config.streams]
    service.workers = workers if plan.all_streams else service.workers + workers
    service.config = plan.config
    log.info("reload: done; %d streams running", len(service.streams))


def _restore(service: Service, old: Config, affected: list[Stream], rebuild: bool) -> None:
    """The one way back: the affected streams of the old configuration run again.

    With ``rebuild`` (everything was stopped and the workers closed) every stream is built
    again from ``old``; otherwise the affected streams start again on the engines they had
    (nothing else was touched)."""
    engines: Optional[dict[str, InferenceEngine]] = None
    if rebuild:
        service.stop_streams(service.streams)
        service.close_workers()
        engines, service.workers = build_engines(old, service.metrics, service.tpus, service.board)
        ids = {sc.id for sc in old.streams}
    else:
        ids = {s.id for s in affected}
        engines = {s.id: s.engine for s in affected}
    back = {sc.id: service.build_stream(sc, engines[sc.id]) for sc in old.streams if sc.id in ids}
    for st in back.values():
        st.start()
    keep = {s.id: s for s in service.streams if s.id not in ids}
    by_id = {**keep, **back}
    service.streams = [by_id[sc.id] for sc in old.streams if sc.id in by_id]
