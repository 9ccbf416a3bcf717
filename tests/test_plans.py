"""The daemon's pure plans, without threads or processes: where streams run, what a reload does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edged.config import Config, config_from_dict
from edged.daemon.reload import plan_reload
from edged.edgetpu import EdgeTpu
from edged.inference.placement import plan_placement


def _models(tmp_path: Path) -> dict[str, str]:
    """Model files as placement sees them: a plain one, and a compiled one with its CPU twin."""
    for name in ("plain.tflite", "det.tflite", "det_edgetpu.tflite"):
        (tmp_path / name).write_bytes(b"")
    return {"plain": str(tmp_path / "plain.tflite"), "tpu": str(tmp_path / "det_edgetpu.tflite")}


def _stream(sid: str, model: Any, **extra: Any) -> dict[str, Any]:
    return {"id": sid, "source": {"type": "synthetic"}, "model": model, "sinks": [], **extra}


def _config(*streams: dict[str, Any], **top: Any) -> Config:
    return config_from_dict({"streams": list(streams), **top})


def test_placement_spreads_edgetpu_streams_and_shares_named_models(tmp_path: Path) -> None:
    m = _models(tmp_path)
    cfg = _config(
        _stream("a", {"path": m["tpu"]}),
        _stream("b", {"path": m["tpu"]}),
        _stream("c", {"path": m["tpu"], "device": "usb:0"}),
        _stream("d", {"path": m["plain"]}),
        _stream("e", {"path": m["tpu"], "accelerator": "cpu"}),
        _stream("f", "shared"),
        _stream("g", "shared"),
        models={"shared": {"path": m["plain"]}},
    )
    tpus = [EdgeTpu("usb", 0, "/sys/bus/usb/devices/2-1"), EdgeTpu("pci", 0, "/dev/apex_0")]
    plan = {p.stream: p for p in plan_placement(cfg.streams, tpus)}
    assert [plan[s].on for s in "abcdefg"] == ["edgetpu", "edgetpu", "edgetpu", "cpu", "cpu", "cpu", "shared"]
    # round-robin over the TPUs found; a pinned stream keeps its device
    assert (plan["a"].device, plan["b"].device, plan["c"].device) == ("usb:0", "pci:0", "usb:0")
    assert plan["a"].model.name == "det_edgetpu.tflite" and plan["a"].cpu_twin == tmp_path / "det.tflite"
    assert plan["e"].model.name == "det.tflite"  # accelerator: cpu runs the twin
    assert plan["g"].owner == "f" and plan["f"].shared_model == plan["g"].shared_model == "shared"


def test_placement_without_tpus_names_the_default_worker(tmp_path: Path) -> None:
    m = _models(tmp_path)
    (p,) = plan_placement(_config(_stream("a", {"path": m["tpu"]})).streams, [])
    assert (p.on, p.device, p.selector) == ("edgetpu", "default", None)


def test_reload_plan_restarts_only_what_changed(tmp_path: Path) -> None:
    m = _models(tmp_path)
    old = _config(_stream("a", {"path": m["plain"]}), _stream("b", {"path": m["plain"]}))
    assert plan_reload(old, old).unchanged
    new = _config(
        _stream("a", {"path": m["plain"], "threshold": 0.3}), _stream("c", {"path": m["plain"]})
    )  # a changed, b removed, c added
    plan = plan_reload(old, new)
    assert (plan.restart, plan.start, plan.stop, plan.all_streams) == (("a",), ("c",), ("b",), False)
    assert plan.build == ("a", "c") and plan.describe() == "restarting a; starting c; stopping b"


def test_reload_plan_rebuilds_the_sharers_of_a_changed_model(tmp_path: Path) -> None:
    m = _models(tmp_path)
    shared = {"shared": {"path": m["plain"]}}
    old = _config(_stream("a", "shared"), _stream("b", "shared"), _stream("c", {"path": m["plain"]}), models=shared)
    new = _config(
        _stream("a", "shared"),
        _stream("b", "shared"),
        _stream("c", {"path": m["plain"]}),
        models={"shared": {"path": m["plain"], "top_k": 1}},
    )
    plan = plan_reload(old, new)
    assert set(plan.restart) == {"a", "b"} and not plan.start and not plan.stop


def test_reload_plan_rebuilds_everything_when_an_edgetpu_stream_changes(tmp_path: Path) -> None:
    m = _models(tmp_path)
    old = _config(_stream("a", {"path": m["tpu"]}), _stream("b", {"path": m["plain"]}))
    new = _config(_stream("a", {"path": m["tpu"], "top_k": 1}), _stream("b", {"path": m["plain"]}))
    plan = plan_reload(old, new, on_tpu=["a"])
    assert plan.all_streams and plan.restart == ("a", "b")
    # a CPU stream changing while another runs on the TPU touches only itself
    new = _config(_stream("a", {"path": m["tpu"]}), _stream("b", {"path": m["plain"], "top_k": 1}))
    plan = plan_reload(old, new, on_tpu=["a"])
    assert not plan.all_streams and plan.restart == ("b",)
    # removing the stream that runs on a TPU (even a model that is not compiled: the worker) rebuilds all
    new = _config(_stream("b", {"path": m["plain"]}))
    plan = plan_reload(_config(_stream("a", {"path": m["plain"]}), _stream("b", {"path": m["plain"]})), new, ["a"])
    assert plan.all_streams and plan.stop == ("a",) and plan.restart == ("b",)


def test_reload_plan_keeps_what_only_a_restart_changes(tmp_path: Path) -> None:
    m = _models(tmp_path)
    old = _config(_stream("a", {"path": m["plain"]}), listen="127.0.0.1:9110", device="shelf")
    new = _config(_stream("a", {"path": m["plain"]}), listen="127.0.0.1:9999", device="other")
    plan = plan_reload(old, new)
    assert plan.ignored == ("device", "listen") and plan.unchanged
    assert plan.config.listen == "127.0.0.1:9110" and plan.config.device == "shelf"
    # a listener given on the command line is not the file's to change: not named as ignored
    assert plan_reload(old, new, keep_listen=True).ignored == ("device",)
