"""The Edge TPU path without a TPU, at its real boundaries.

A stand-in for libedgetpu (tests/fake_edgetpu/fake_edgetpu.c) is compiled (support.fake_edgetpu) with the
system C compiler into a build that loads and claims no nodes, and one that refuses to
load. edged loads it exactly as it loads libedgetpu: ``load_delegate`` in a spawned
worker process, the model prepared with the delegate, frames through shared memory.
Faults are real: the worker is killed with SIGABRT (what libedgetpu's LOG(FATAL) does)
and SIGKILL, and frozen with SIGSTOP past the deadline.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from support import fake_edgetpu
from support.client import scrape
from support.daemon import ROOT, Daemon
from support.sinks import Collect
from support.wait import wait_for

from edged.config import config_from_dict
from edged.daemon import Service
from edged.daemon.views import stream_status
from edged.errors import AcceleratorError
from edged.worker import WorkerFailure

pytestmark = [pytest.mark.system, pytest.mark.usefixtures("no_tpus_here")]  # Edge TPU worker processes, the listener

MODEL = "mobilenet_v1_0.25_128_quant.tflite"
TPU_MODEL = "mobilenet_v1_0.25_128_quant_edgetpu.tflite"


def test_worker_failure_is_an_accelerator_error() -> None:
    """One hierarchy: a worker failure that reaches the CLI is a one-line error with exit code 1."""
    exc = WorkerFailure("no result within 1 s; worker killed", "hang")
    assert isinstance(exc, AcceleratorError) and exc.exit_code == 1
    assert str(exc) == exc.reason and exc.kind == "hang"


@pytest.fixture(scope="session")
def plain_models(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The CPU model alone in a folder (in testdata its _edgetpu twin sits beside it)."""
    out = tmp_path_factory.mktemp("plain")
    shutil.copy(models_dir / MODEL, out / MODEL)
    shutil.copy(models_dir / "imagenet_labels.txt", out / "imagenet_labels.txt")
    return out


@pytest.fixture(scope="session")
def fake_libs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("fake_edgetpu")
    return {"load": fake_edgetpu.build(out), "refuse": fake_edgetpu.build(out, refuse=True)}


def healthz(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
        return resp.status


def make_config(
    models_dir: Path, images_dir: Path, library: Path, port: int, streams: list[dict] | None = None, **tpu: Any
) -> Any:
    def stream(sid: str, **model: Any) -> dict:
        return {
            "id": sid,
            "source": {"type": "images", "path": str(images_dir / "grace_hopper.bmp"), "fps": 20, "loop": True},
            "model": {
                "path": str(models_dir / MODEL),
                "labels": str(models_dir / "imagenet_labels.txt"),
                "accelerator": "edgetpu",
                "threads": 1,
                **model,
            },
            "sinks": [],
        }

    return config_from_dict(
        {
            "listen": f"127.0.0.1:{port}",
            "edgetpu": {
                "library": str(library),
                "deadline_seconds": 0.5,
                "probe_initial_seconds": 0.2,
                "probe_max_seconds": 1.0,
                **tpu,
            },
            "streams": [stream(**s) for s in (streams or [{"sid": "cam"}])],
        }
    )


def start(cfg: Any) -> tuple[Service, dict[str, Collect]]:
    svc = Service(cfg)
    svc.start()
    sinks = {}
    for s in svc.streams:
        sinks[s.id] = Collect()
        s.sinks.append(sinks[s.id])
    return svc, sinks


@pytest.mark.parametrize("fault", ["SIGABRT", "SIGKILL", "hang"])
def test_worker_fault_moves_to_cpu_and_back(fault: str, fake_libs, plain_models, images_dir, free_port, caplog) -> None:
    caplog.set_level("INFO")
    svc, sinks = start(make_config(plain_models, images_dir, fake_libs["load"], free_port))
    sink = sinks["cam"]
    try:
        worker = svc.workers[0]
        wait_for(lambda: sink.since(0) and sink.results[-1].accelerator == "edgetpu", 10, "results on the Edge TPU")
        first_pid = worker.pid
        assert first_pid and first_pid != os.getpid()
        t_fault = time.time()
        os.kill(first_pid, signal.SIGSTOP if fault == "hang" else getattr(signal, fault))
        # results resume on the CPU within 2 s of the fault, and the daemon keeps serving
        cpu = wait_for(lambda: [r for r in sink.since(t_fault) if r.accelerator == "cpu"], 2.0, "CPU results")
        assert cpu[0].timestamp - t_fault < 2.0
        assert healthz(free_port) == 200
        m = scrape(free_port)
        kind = "hang" if fault == "hang" else "crash"
        assert m[("edged_fallbacks_total", (("reason", kind), ("stream", "cam")))] == 1
        # the same labels as the CPU path's results: the top class does not change with the accelerator
        assert cpu[0].classes and cpu[0].classes[0].label == sink.results[0].classes[0].label
        # once the worker is restarted (probe every 0.2-1 s), the stream moves back
        back = wait_for(
            lambda: [r for r in sink.since(cpu[0].timestamp) if r.accelerator == "edgetpu"],
            10,
            "results back on the Edge TPU",
        )
        assert worker.pid != first_pid
        m = scrape(free_port)
        assert m[("edged_worker_restarts_total", (("tpu", "default"),))] >= 1
        assert m[("edged_accelerator_up", (("tpu", "default"),))] == 1
        assert m[("edged_accelerator_active", (("accelerator", "edgetpu"), ("stream", "cam")))] == 1
        assert m[("edged_inferences_total", (("accelerator", "cpu"), ("stream", "cam")))] >= 1
        # nothing but the frames in flight is lost: sequence numbers before, during and after
        # the fault have no gaps beyond what the deadline let the source produce meanwhile
        seqs = [r.seq for r in sink.results if r.timestamp <= back[0].timestamp]
        gaps = [b - a - 1 for a, b in zip(seqs, seqs[1:])]
        allowed = 0 if fault != "hang" else int(0.5 * 20) + 2  # deadline 0.5 s at 20 fps
        assert max(gaps) <= allowed, gaps
        stream = svc.streams[0]
        assert stream_status(stream)["edgetpu"]["accelerator"] == "edgetpu"
        # every switch logged once, with its reason
        msgs = [r.getMessage() for r in caplog.records if r.name == "edged.failover"]
        reason = f"worker killed by {fault}" if fault != "hang" else "no result within 0.5 s; worker killed"
        moved = [m for m in msgs if "moved to the CPU twin" in m]
        assert moved == [
            f"stream cam: Edge TPU default failed ({reason}); moved to the CPU twin {MODEL}; "
            "probing the TPU again in 0.2 s"
        ], msgs
        assert len([m for m in msgs if m.startswith("stream cam: back on the Edge TPU default after")]) == 1
    finally:
        if fault == "hang" and first_pid:
            try:
                os.kill(first_pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        svc.close()


def test_refusing_delegate_auto_runs_on_cpu_twin_then_moves_when_fault_clears(
    fake_libs, models_dir, images_dir, free_port, tmp_path, caplog
) -> None:
    link = tmp_path / "libedgetpu.so.1"
    link.symlink_to(fake_libs["refuse"])
    cfg = make_config(
        models_dir,
        images_dir,
        link,
        free_port,
        streams=[{"sid": "cam", "accelerator": "auto", "path": str(models_dir / TPU_MODEL)}],
    )
    caplog.set_level("INFO")
    svc, sinks = start(cfg)
    try:
        warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert warnings == [
            "stream cam: Edge TPU unavailable (delegate did not load: Failed to load delegate from "
            f"{link} fake edgetpu: no Edge TPU device found); running on the CPU twin {MODEL}"
        ]
        wait_for(lambda: sinks["cam"].results, 5, "CPU results")
        assert {r.accelerator for r in sinks["cam"].results} == {"cpu"}
        assert sinks["cam"].results[0].model == MODEL
        assert scrape(free_port)[("edged_fallbacks_total", (("reason", "unavailable"), ("stream", "cam")))] == 1
        # the loading build takes its place: the probe finds it, but this model is compiled for
        # the Edge TPU and the stand-in claims none of its nodes, so the stream stays on the CPU
        link.unlink()
        link.symlink_to(fake_libs["load"])
        # the next probe (every 0.2-1 s) loads it and finds no node claimed: the worker stays down
        wait_for(
            lambda: "claimed none of its nodes" in (svc.workers[0].last_reason or ""),
            10,
            lambda: f"a probe with the loading build (last reason: {svc.workers[0].last_reason})",
        )
        assert svc.workers[0].up is False
        assert "claimed none of its nodes" in (svc.workers[0].last_reason or "")
        assert sinks["cam"].results[-1].accelerator == "cpu"
    finally:
        svc.close()


def test_started_without_tpu_moves_to_it_when_the_fault_clears(
    fake_libs, plain_models, images_dir, free_port, tmp_path
) -> None:
    """Started while the delegate refuses (no TPU plugged in): CPU twin; then it loads: the TPU.

    The stand-in claims no nodes, so the "Edge TPU model" here is a CPU model saved under
    an ``_edgetpu`` name, which the stand-in's worker can run; its twin sits beside it."""
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(plain_models / MODEL, models / MODEL)
    shutil.copy(plain_models / MODEL, models / TPU_MODEL)
    link = tmp_path / "libedgetpu.so.1"
    link.symlink_to(fake_libs["refuse"])
    cfg = make_config(
        plain_models,
        images_dir,
        link,
        free_port,
        streams=[{"sid": "cam", "accelerator": "auto", "path": str(models / TPU_MODEL)}],
    )
    svc, sinks = start(cfg)
    try:
        wait_for(lambda: sinks["cam"].results, 5, "results on the CPU twin")
        assert sinks["cam"].results[0].accelerator == "cpu" and sinks["cam"].results[0].model == MODEL
        link.unlink()
        link.symlink_to(fake_libs["load"])  # the TPU is plugged in
        moved = wait_for(lambda: [r for r in sinks["cam"].results if r.accelerator == "edgetpu"], 10, "the TPU")
        assert moved[0].model == TPU_MODEL
        assert scrape(free_port)[("edged_accelerator_up", (("tpu", "default"),))] == 1
    finally:
        svc.close()


def test_strict_mode_exits_with_one_line(fake_libs, models_dir, images_dir, free_port, tmp_path) -> None:
    cfg_path = tmp_path / "edged.yaml"
    cfg_path.write_text(
        json.dumps(
            {
                "listen": f"127.0.0.1:{free_port}",
                "edgetpu": {"library": str(fake_libs["refuse"])},
                "streams": [
                    {
                        "id": "cam",
                        "source": {"type": "synthetic"},
                        "model": {"path": str(models_dir / TPU_MODEL), "accelerator": "edgetpu"},
                    }
                ],
            }
        )
    )
    d = Daemon(tmp_path, cfg_path, cwd=ROOT)
    assert d.wait(60) != 0
    lines = [ln for ln in d.stderr.splitlines() if ln.strip()]
    assert lines == [
        "edged: error: stream cam: accelerator is edgetpu but the Edge TPU delegate did not load "
        f"(delegate did not load: Failed to load delegate from {fake_libs['refuse']} "
        "fake edgetpu: no Edge TPU device found)"
    ], d.stderr


def test_a_refused_delegate_on_a_tpu_another_process_holds_names_the_holder(
    fake_libs, models_dir, free_port, tmp_path
) -> None:
    """Another program (Frigate, say) has the USB TPU open: the one-line error says who, beside the library's words."""
    import stat

    from support.fakeboard import hold

    sys_r, dev_r = tmp_path / "sys", tmp_path / "dev"
    usb = sys_r / "bus" / "usb" / "devices" / "2-1"
    usb.mkdir(parents=True)
    for name, value in {"idVendor": "18d1", "idProduct": "9302", "busnum": "2", "devnum": "5"}.items():
        (usb / name).write_text(value + "\n")
    node = dev_r / "bus" / "usb" / "002" / "005"
    node.parent.mkdir(parents=True)
    os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # a node a process can hold open
    config = {
        "listen": f"127.0.0.1:{free_port}",
        "edgetpu": {"library": str(fake_libs["refuse"])},
        "streams": [
            {
                "id": "cam",
                "source": {"type": "synthetic"},
                "model": {"path": str(models_dir / TPU_MODEL), "accelerator": "edgetpu", "device": "usb:0"},
            }
        ],
    }
    holder = hold(node)
    try:
        d = Daemon(tmp_path, config, env={"EDGED_SYSFS_ROOT": str(sys_r), "EDGED_DEV_ROOT": str(dev_r)}, cwd=ROOT)
        assert d.wait(60) != 0
    finally:
        holder.kill()
        holder.wait()
    lines = [ln for ln in d.stderr.splitlines() if ln.strip()]
    assert lines == [
        "edged: error: stream cam: accelerator is edgetpu but the Edge TPU delegate did not load "
        f"(delegate did not load: Failed to load delegate from {fake_libs['refuse']} "
        f"fake edgetpu: no Edge TPU device found; {node} is held by pid {holder.pid} (sleep): "
        "an Edge TPU serves one process at a time)"
    ], d.stderr


def test_options_and_devices_reach_the_delegate_one_worker_per_tpu(
    fake_libs, plain_models, images_dir, free_port, tmp_path, monkeypatch
) -> None:
    log = tmp_path / "delegate.log"
    monkeypatch.setenv("EDGED_FAKE_DELEGATE_LOG", str(log))
    cfg = make_config(
        plain_models,
        images_dir,
        fake_libs["load"],
        free_port,
        streams=[{"sid": "a", "device": "usb:0"}, {"sid": "b", "device": "usb:1"}, {"sid": "c", "device": "usb:0"}],
        options={"Performance": "max"},
    )
    svc, sinks = start(cfg)
    try:
        assert sorted(w.label for w in svc.workers) == ["usb:0", "usb:1"]
        pids = {w.label: w.pid for w in svc.workers}
        assert len(set(pids.values())) == 2
        for sid in "abc":
            wait_for(lambda sid=sid: sinks[sid].results, 10, f"results of {sid}")
        lines = log.read_text().splitlines()
        creates = [ln for ln in lines if ln.startswith("create")]
        # one delegate per model, created in the worker of its device, with the options as given
        assert sorted(ln.split(" ", 2)[2] for ln in creates) == [
            "Performance=max device=usb:0",
            "Performance=max device=usb:0",
            "Performance=max device=usb:1",
        ]
        assert {int(ln.split()[1].split("=")[1]) for ln in creates} == set(pids.values())
        # killing one TPU's worker moves only its streams
        t = time.time()
        os.kill(pids["usb:1"], signal.SIGKILL)
        wait_for(lambda: [r for r in sinks["b"].since(t) if r.accelerator == "cpu"], 2.0, "b on the CPU")
        assert all(r.accelerator == "edgetpu" for r in sinks["a"].since(t))
    finally:
        svc.close()


def test_streams_spread_over_the_tpus_found_and_temperature(
    fake_libs, plain_models, images_dir, free_port, tmp_path, monkeypatch
) -> None:
    sysfs, dev = tmp_path / "sys", tmp_path / "dev"
    for n, temp in ((0, "52750"), (1, None)):
        d = sysfs / "class" / "apex" / f"apex_{n}"
        d.mkdir(parents=True)
        if temp:
            (d / "temp").write_text(temp + "\n")
    dev.mkdir()
    for n in (0, 1):
        (dev / f"apex_{n}").write_text("")
    monkeypatch.setenv("EDGED_SYSFS_ROOT", str(sysfs))
    monkeypatch.setenv("EDGED_DEV_ROOT", str(dev))
    cfg = make_config(plain_models, images_dir, fake_libs["load"], free_port, streams=[{"sid": "a"}, {"sid": "b"}])
    svc, sinks = start(cfg)
    try:
        assert sorted(w.label for w in svc.workers) == ["pci:0", "pci:1"]
        m = scrape(free_port)
        assert m[("edged_edgetpu_temperature_celsius", (("tpu", "pci:0"),))] == pytest.approx(52.75)
        assert ("edged_edgetpu_temperature_celsius", (("tpu", "pci:1"),)) not in m
        assert m[("edged_first_inference_seconds", (("stream", "a"), ("tpu", "pci:0")))] > 0
    finally:
        svc.close()


def test_reload_rebuilds_the_tpu_workers_and_restores_them_when_refused(
    fake_libs, plain_models, images_dir, free_port, tmp_path, caplog
) -> None:
    """SIGHUP's reload with a stream on the Edge TPU: the worker is closed and started anew
    (one process owns a TPU); a refused configuration puts the old streams and worker back."""
    import yaml

    caplog.set_level("INFO")
    raw = make_config(plain_models, images_dir, fake_libs["load"], free_port).model_dump(mode="json")
    path = tmp_path / "edged.yaml"
    path.write_text(yaml.safe_dump(raw))
    svc = Service(config_from_dict(raw), config_path=str(path))
    svc.start()

    def on_tpu() -> bool:
        s = svc.stream("cam")
        return s is not None and s.latest is not None and s.latest.accelerator == "edgetpu"

    try:
        wait_for(on_tpu, 10, "results on the Edge TPU")
        old_pid = svc.workers[0].pid
        raw["streams"][0]["model"]["threshold"] = 0.3
        path.write_text(yaml.safe_dump(raw))
        assert svc.reload()
        assert len(svc.workers) == 1 and svc.workers[0].pid not in (None, old_pid)
        with pytest.raises(ProcessLookupError):
            os.kill(old_pid, 0)  # the old worker is gone
        assert svc.stream("cam").cfg.model.threshold == 0.3
        wait_for(on_tpu, 10, "results on the Edge TPU after the reload")
        # refused: a model that does not exist; the old streams and a worker come back
        pid = svc.workers[0].pid
        raw["streams"][0]["model"]["path"] = str(tmp_path / "missing_edgetpu.tflite")
        path.write_text(yaml.safe_dump(raw))
        assert not svc.reload()
        assert any(
            "reload refused" in r.getMessage() and "missing_edgetpu.tflite" in r.getMessage() for r in caplog.records
        )
        assert svc.stream("cam").cfg.model.threshold == 0.3 and svc.workers[0].pid != pid
        wait_for(on_tpu, 10, "results on the Edge TPU after the refused reload")
    finally:
        svc.close()
