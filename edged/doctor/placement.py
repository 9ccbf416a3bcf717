"""The doctor's checks of a configuration (``--config``): it loads, and where each stream's model runs.

The configuration is read as ``edged config check`` reads it (a broken file is one line, the
"config" check); each stream is placed by :func:`edged.inference.placement.plan_placement` with
the Edge TPUs found now, and said where its model runs and why (the "placement" check).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from ..edgetpu import EdgeTpu
from ..errors import EdgedError
from .findings import OK, PROBLEM, WARNING, Finding

if TYPE_CHECKING:
    from ..config import Config
    from ..inference.placement import Placement
    from ..model_config import ModelConfig


def load(path: str) -> tuple[Optional[Config], Finding]:
    """(the configuration or None, the "config" finding)."""
    from ..config import load_config

    try:
        cfg = load_config(path)
    except EdgedError as exc:
        text = " ".join(str(exc).split())  # one line, whatever the error
        return None, Finding("config", PROBLEM, text, f"fix the file; `edged config check {path}` says the same")
    n = len(cfg.streams)
    return cfg, Finding("config", OK, f"{path}: valid ({n} stream{'s' * (n != 1)})")


def _shown(path: Path) -> str:
    """A model path as the finding shows it: relative to the working directory when it is below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _why_tpu(m: ModelConfig, model: Path) -> str:
    from .runtimes import is_compiled

    if m.accelerator == "edgetpu":
        return "accelerator: edgetpu"
    if Path(m.path) != model:
        return f"auto, and its _edgetpu twin {model.name} is beside it"
    return "compiled for the Edge TPU" if is_compiled(model) else "auto"


def _cpu_finding(p: Placement, m: ModelConfig) -> Finding:
    from ..inference import Engine

    why = "accelerator: cpu" if m.accelerator == "cpu" else "auto and no _edgetpu twin: not compiled for the Edge TPU"
    details = {"stream": p.stream, "on": "cpu", "model": str(p.model), "why": why}
    try:
        Engine.load(m, p.model)
    except EdgedError as exc:
        return Finding(
            "placement", PROBLEM, f"stream {p.stream}: CPU ({why}), but {exc}", "fix the model path", details=details
        )
    return Finding("placement", OK, f"stream {p.stream}: {_shown(p.model)} on the CPU ({why})", details=details)


def _tpu_finding(p: Placement, m: ModelConfig, tpus: Sequence[EdgeTpu]) -> Finding:
    why = _why_tpu(m, p.model)
    details = {"stream": p.stream, "on": "edgetpu", "model": str(p.model), "device": p.selector, "why": why}
    details["cpu_twin"] = str(p.cpu_twin) if p.cpu_twin else None
    here = p.selector is not None and any(t.selector == p.selector for t in tpus)
    if p.selector is not None and (here or m.device is None):
        return Finding(
            "placement", OK, f"stream {p.stream}: {_shown(p.model)} on {p.selector} ({why})", details=details
        )
    where = f"device {m.device}, which is not present" if m.device else "no Edge TPU is present"
    if m.accelerator == "edgetpu":
        text = f"stream {p.stream}: {_shown(p.model)} wants an Edge TPU ({why}) but {where}: the stream cannot start"
        return Finding("placement", PROBLEM, text, "plug the Edge TPU in (or set accelerator: auto)", details=details)
    twin = f"its CPU twin {_shown(p.cpu_twin)}" if p.cpu_twin else "no CPU twin (none beside it: the stream fails)"
    text = f"stream {p.stream}: {_shown(p.model)} wants an Edge TPU ({why}) but {where}: runs on {twin}"
    return Finding("placement", WARNING, text, "plug the Edge TPU in; edged moves the stream to it", details=details)


def placement_findings(cfg: Config, tpus: Sequence[EdgeTpu]) -> list[Finding]:
    """One "placement" finding per stream: where its model runs with the TPUs found now, and why."""
    from ..inference.placement import plan_placement

    models = {s.id: s.model for s in cfg.streams}
    out = []
    for p in plan_placement(cfg.streams, tpus):
        m = models[p.stream]
        if p.on == "shared":
            out.append(
                Finding(
                    "placement",
                    OK,
                    f"stream {p.stream}: shares the engine of stream {p.owner} (models: {p.shared_model})",
                    details={"stream": p.stream, "on": "shared"},
                )
            )
        elif p.on == "cpu":
            out.append(_cpu_finding(p, m))
        else:
            out.append(_tpu_finding(p, m, tpus))
    return out


def tpu_models(cfg: Config, tpus: Sequence[EdgeTpu]) -> dict[str, Path]:
    """The configuration's Edge TPU model for each selector (the first stream's placed there)."""
    from ..inference.placement import plan_placement

    out: dict[str, Path] = {}
    for p in plan_placement(cfg.streams, tpus):
        if p.on == "edgetpu" and p.selector is not None:
            out.setdefault(p.selector, p.model)
    return out


def wants_tpu(cfg: Optional[Config]) -> bool:
    """Whether a stream of ``cfg`` would run on an Edge TPU if one were present."""
    if cfg is None:
        return False
    from ..inference.placement import wants_edgetpu

    return any(wants_edgetpu(s.model) for s in cfg.streams)
