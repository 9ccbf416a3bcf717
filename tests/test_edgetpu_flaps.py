"""A flapping Edge TPU: one that fails right after each successful probe (defect 6 of issue 13).

The stand-in delegate (tests/fake_edgetpu/fake_edgetpu.c) reads ``EDGED_FAKE_FAULT_FILE`` each
time a worker creates it: ``abort 300`` aborts the worker 0.3 s later, ``hang 300`` stops it
(SIGSTOP) so that the next request misses its deadline. Each probe loads the model and runs its
test inference within that time, so the worker comes back, the stream moves to it, and it fails
again. Without damping (``stable_seconds: 0``) the stream switches every probe interval; with it
the probe wait goes on doubling, so the switches over a fixed window are bounded. Once the fault
file is gone, the next probe brings the TPU back and the stream stays on it.

Each run prints what it measured (switches and frames lost per minute, the workers' CPU).
"""

from __future__ import annotations

import resource
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from support import fake_edgetpu
from support.client import scrape
from support.sinks import Collect
from support.wait import wait_for

from edged.config import config_from_dict
from edged.daemon import Service
from edged.daemon.views import stream_status

pytestmark = [pytest.mark.system, pytest.mark.faults, pytest.mark.usefixtures("no_tpus_here")]

MODEL = "mobilenet_v1_0.25_128_quant.tflite"
FPS = 20
WINDOW = 10.0  # seconds of flapping measured
FAULT_AFTER_MS = 300


@pytest.fixture(scope="module")
def fake_lib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fake_edgetpu.build(tmp_path_factory.mktemp("fake_edgetpu"))


@pytest.fixture(scope="module")
def plain_models(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("plain")
    shutil.copy(models_dir / MODEL, out / MODEL)
    return out


def config(models: Path, images: Path, library: Path, port: int, **tpu: Any) -> Any:
    return config_from_dict(
        {
            "listen": f"127.0.0.1:{port}",
            "edgetpu": {"library": str(library), "deadline_seconds": 0.5, "probe_max_seconds": 8.0, **tpu},
            "streams": [
                {
                    "id": "cam",
                    "source": {"type": "images", "path": str(images / "grace_hopper.bmp"), "fps": FPS, "loop": True},
                    "model": {"path": str(models / MODEL), "accelerator": "edgetpu", "threads": 1},
                    "sinks": [],
                }
            ],
        }
    )


def switches(results: list[Any]) -> int:
    """Moves from the Edge TPU to the CPU in a run of results."""
    accs = [r.accelerator for r in results]
    return sum(1 for a, b in zip(accs, accs[1:]) if a == "edgetpu" and b == "cpu")


def lost(results: list[Any]) -> int:
    """Frames the source produced that have no result (gaps in seq)."""
    seqs = [r.seq for r in results]
    return sum(b - a - 1 for a, b in zip(seqs, seqs[1:]))


def flap_window(sink: Collect) -> dict[str, float]:
    """Measure WINDOW seconds of flapping, from the first fallback on."""
    wait_for(lambda: any(r.accelerator == "cpu" for r in sink.results), 10, "the first fallback")
    t0 = time.time()
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    time.sleep(WINDOW)
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    got = [r for r in sink.results if t0 <= r.timestamp < t0 + WINDOW]
    produced = got[-1].seq - got[0].seq + 1
    return {
        "switches": switches(got),
        "lost_pct": round(100.0 * lost(got) / produced, 1),
        "on_tpu_pct": round(100.0 * sum(r.accelerator == "edgetpu" for r in got) / len(got), 1),
        "worker_cpu_s": round(cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime, 2),
    }


def run(cfg: Any) -> tuple[Service, Collect]:
    svc = Service(cfg)
    svc.start()
    sink = Collect()
    svc.streams[0].sinks.append(sink)
    return svc, sink


def comes_back_and_stays(svc: Service, sink: Collect, fault_file: Path, port: int) -> None:
    worker = svc.workers[0]
    st = stream_status(svc.streams[0])["edgetpu"]
    assert st["flaps"] >= 2 and st["flaps"] == worker.flaps, st
    assert st["next_probe_seconds"] is None or st["next_probe_seconds"] <= 8.0, st
    assert scrape(port)[("edged_edgetpu_flaps_total", (("tpu", "default"),))] == worker.flaps
    fault_file.write_text("")  # the TPU is healthy again: the next probe (within probe_max_seconds) finds it

    def healthy_generation() -> bool:
        """Up, and still the same worker three fault delays later: not one spawned just before the
        file was cleared (that one read the fault and dies FAULT_AFTER_MS after its start)."""
        gen = worker.generation
        if not worker.up:
            return False
        time.sleep(3 * FAULT_AFTER_MS / 1000)
        return worker.up and worker.generation == gen

    wait_for(healthy_generation, 30, "a healthy worker")
    back = wait_for(lambda: [r for r in sink.since(time.time() - 0.5) if r.accelerator == "edgetpu"], 5, "TPU results")
    time.sleep(3.0)
    assert {r.accelerator for r in sink.since(back[0].timestamp)} == {"edgetpu"}, "it stays on the TPU"
    assert worker.up and stream_status(svc.streams[0])["edgetpu"]["next_probe_seconds"] is None


@pytest.mark.parametrize("fault", ["abort", "hang"])
def test_a_flapping_tpu_is_damped_and_comes_back_once_healthy(
    fault: str, fake_lib, plain_models, images_dir, free_port, tmp_path, monkeypatch
) -> None:
    fault_file = tmp_path / "fault"
    monkeypatch.setenv("EDGED_FAKE_FAULT_FILE", str(fault_file))
    measured: dict[str, dict[str, float]] = {}
    for mode, stable in (("undamped", 0.0), ("damped", 30.0)):
        fault_file.write_text(f"{fault} {FAULT_AFTER_MS}")  # from the first worker on
        svc, sink = run(config(plain_models, images_dir, fake_lib, free_port, stable_seconds=stable))
        try:
            measured[mode] = flap_window(sink)
            if mode == "damped":
                comes_back_and_stays(svc, sink, fault_file, free_port)
        finally:
            svc.close()
    per_min = {mode: m["switches"] * 60 / WINDOW for mode, m in measured.items()}
    print(
        f"\nflapping TPU ({fault} {FAULT_AFTER_MS} ms after each probe), {WINDOW:g} s windows: {measured}; "
        f"switches to the CPU per minute: {per_min}"
    )
    assert measured["damped"]["switches"] <= 3, measured
    assert measured["undamped"]["switches"] > measured["damped"]["switches"], measured
