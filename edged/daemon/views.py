"""What the daemon tells about itself: health, readiness, the systemd STATUS line, the MQTT
device summary and the HTTP status. Pure functions of the streams (and the service's
parts for the full status); each classifies a stream with :func:`edged.stream.phase`."""

from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from .. import __version__
from ..doctor import live
from ..edgetpu import read_temperature
from ..model import EDGETPU_CUSTOM_OP
from ..stream import Phase, Stream, phase

if TYPE_CHECKING:
    from ..edgetpu import EdgeTpu
    from ..health import HealthBoard
    from ..worker import DeviceWorker

STATUS_LINE_MAX = 400  # characters of a STATUS= line


def health(streams: Sequence[Stream], board: HealthBoard) -> tuple[bool, dict[str, Any]]:
    """Healthy while no stream has a crashed thread and every component works (``/healthz``)."""
    failed = {s.id: s.last_error for s in streams if phase(s) is Phase.FAILED}
    components = board.unhealthy()
    detail: dict[str, Any] = {"streams": {s.id: str(s.state) for s in streams}}
    if failed:
        detail["failed"] = failed
    if components:
        detail["components"] = components
    return not failed and not components, detail


def readiness(streams: Sequence[Stream]) -> tuple[bool, dict[str, Any]]:
    """Ready: every stream has its model loaded (it exists) and has produced a result (``/readyz``)."""
    out = {}
    for s in streams:
        p = phase(s)
        if p is Phase.FAILED:
            out[s.id] = f"failed: {s.last_error}"
        elif s.has_result():
            out[s.id] = "ready"
        elif p is Phase.WAITING_FOR_SOURCE:
            out[s.id] = f"waiting for its source: {s.source_error}"
        else:
            out[s.id] = "waiting for its first result"
    ok = bool(out) and all(v == "ready" for v in out.values())
    return ok, {"streams": out}


def started_up(streams: Sequence[Stream]) -> bool:
    """Every stream has produced a result, ended, or is waiting for a source that is down.

    A camera that is off at boot does not hold the unit in "activating" until systemd gives
    up and kills everything: the stream keeps reconnecting and says so in STATUS=.
    """
    return all(phase(s) is not Phase.STARTING for s in streams)


def status_line(streams: Sequence[Stream]) -> str:
    """The systemd STATUS= line: each stream in a few words."""
    parts = []
    for s in streams:
        p = phase(s)
        if p is Phase.PRODUCING:
            parts.append(f"{s.id} {s.fps():.1f} fps on {s.engine.accelerator}")
        else:
            parts.append(f"{s.id} {p}")
    line = "; ".join(parts)
    return line if len(line) <= STATUS_LINE_MAX else line[: STATUS_LINE_MAX - 3] + "..."


def summary(
    device: str, streams: Sequence[Stream], board: HealthBoard, tpus: Sequence[EdgeTpu] = (), url: str = ""
) -> dict[str, Any]:
    """The device in brief (the MQTT status and Home Assistant's entities): streams with model,
    accelerator, fps, state, detection switch and fallbacks; the Edge TPUs with their
    temperature; the components that do not work, when there are any."""
    problems = board.unhealthy()
    return {
        **({"unhealthy": problems} if problems else {}),
        "device": device,
        "version": __version__,
        "hardware": hardware(tpus),
        **({"url": url} if url else {}),
        "streams": [
            {
                "id": s.id,
                "state": str(s.state),
                "model": s.engine.info.name,
                "accelerator": s.engine.accelerator,
                "fps": round(s.fps(), 2),
                "detect": s.switch.on,
                "fallbacks": fallbacks(s),
            }
            for s in streams
        ],
        "edgetpus": [{"name": t.selector, "temperature": read_temperature(t.temperature_path)} for t in tpus],
        "warnings": live.warnings(tpus),
    }


def fallbacks(s: Stream) -> int:
    """How often the stream's model went from the Edge TPU to its CPU twin since start."""
    status = s.engine.status()
    return status.fallbacks if status is not None else 0


def hardware(tpus: Sequence[EdgeTpu]) -> str:
    """The board (the device tree's model, else the machine) and its Coral accelerators, in words."""
    try:
        board = Path("/proc/device-tree/model").read_text(encoding="utf-8", errors="replace").strip("\0\n ")
    except OSError:
        board = ""
    board = board or platform.machine() or "computer"
    kinds = sorted({"USB" if t.type == "usb" else "PCIe" for t in tpus})
    return f"{board} with Coral {' and '.join(kinds)}" if kinds else board


def stream_status(s: Stream) -> dict[str, Any]:
    """One stream in ``/api/v1/status``."""
    info = s.engine.info
    tpu = s.engine.status()
    return {
        "id": s.id,
        "state": str(s.state),
        "source": s.source.describe(),
        "model": info.name,
        "task": info.task,
        "accelerator": s.engine.accelerator,
        "runtime": info.runtime,
        "fps": round(s.fps(), 2),
        "processed": s.metrics.processed,
        "dropped": s.metrics.dropped,
        "last_error": s.last_error,
        "source_state": str(s.source_state),
        "source_error": s.source_error,
        "reconnects": s.metrics.reconnects,
        "detect": s.switch.on,
        **({"edgetpu": tpu.to_dict()} if tpu is not None else {}),
    }


def where(s: Stream) -> str:
    """Where a stream's model runs now: ``cpu`` or the Edge TPU's label."""
    if s.engine.accelerator != "edgetpu":
        return "cpu"
    tpu = s.engine.status()
    return (tpu.device if tpu is not None else None) or "edgetpu"


def _models(streams: Sequence[Stream]) -> list[dict[str, Any]]:
    models: dict[str, dict[str, Any]] = {}
    for s in streams:
        info = s.engine.info
        m = models.setdefault(
            info.name,
            {
                "name": info.name,
                "task": info.task,
                "runtime": info.runtime,
                "edgetpu_compiled": EDGETPU_CUSTOM_OP in info.custom_ops,
                "input": list(info.input.shape),
                "streams": [],
            },
        )
        m["streams"].append(s.id)
    return list(models.values())


def _accelerators(
    streams: Sequence[Stream], tpus: Sequence[EdgeTpu], workers: Sequence[DeviceWorker]
) -> list[dict[str, Any]]:
    on = {s.id: where(s) for s in streams}
    used = {w.label for w in workers}
    out = [{"type": "cpu", "name": "cpu", "streams": [sid for sid, w in on.items() if w == "cpu"]}]
    for t in tpus:
        name = f"{t.type}:{t.index}"
        out.append(
            {
                "type": "edgetpu",
                "name": name,
                "path": t.path,
                "in_use": name in used,
                "streams": [sid for sid, w in on.items() if w == name],
            }
        )
    return out


def status(
    device: str,
    streams: Sequence[Stream],
    tpus: Sequence[EdgeTpu],
    workers: Sequence[DeviceWorker],
    started: float,
    event_clients: int,
    board: HealthBoard,
) -> dict[str, Any]:
    """``/api/v1/status``: the device, its streams, models and accelerators, its failing components."""
    return {
        "unhealthy": board.unhealthy(),
        "device": device,
        "version": __version__,
        "uptime_seconds": round(time.time() - started, 1),
        "streams": [stream_status(s) for s in streams],
        "models": _models(streams),
        "accelerators": _accelerators(streams, tpus, workers),
        "warnings": live.warnings(tpus),
        "event_clients": event_clients,
    }
