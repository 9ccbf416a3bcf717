"""The pipelined Edge TPU worker, on an emulated TPU's time profile.

The stand-in delegate (tests/fake_edgetpu) loads in a real worker process; with
``EDGED_EMULATE_EDGETPU`` set, the child's invoke takes the recorded time per invoke without
using the CPU and writes the outputs recorded for that input by a real CPU inference
(:mod:`edged.emulation`). Faults are real signals to the worker process. What is asserted is
behaviour: requests in flight together, replies matched to requests, results in order, no
frame lost when the worker dies or hangs with several requests in flight.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from support import fake_edgetpu

from edged import emulation
from edged.config import ModelConfig
from edged.inference import Engine
from edged.inference.failover import FailoverEngine
from edged.inference.local import WorkerBackend
from edged.worker import DeviceWorker, WorkerFailure

pytestmark = [pytest.mark.system, pytest.mark.usefixtures("no_tpus_here")]  # Edge TPU worker processes

MODEL = "mobilenet_v1_0.25_128_quant.tflite"
SLOW = 0.25  # seconds per emulated invoke: long enough that several requests are surely in flight


@pytest.fixture(scope="module")
def fake_lib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fake_edgetpu.build(tmp_path_factory.mktemp("fake_edgetpu"))


@pytest.fixture(scope="module")
def model(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("plain")
    shutil.copy(models_dir / MODEL, out / MODEL)
    shutil.copy(models_dir / "imagenet_labels.txt", out / "imagenet_labels.txt")
    return out / MODEL


@pytest.fixture(scope="module")
def frames(images_dir: Path) -> list[np.ndarray]:
    """Six different frames: crops of one photograph at different offsets."""
    image = cv2.imread(str(images_dir / "grace_hopper.bmp"))
    return [np.ascontiguousarray(image[10 * i : 10 * i + 300, 5 * i : 5 * i + 300]) for i in range(6)]


def model_cfg(model: Path) -> ModelConfig:
    return ModelConfig(path=str(model), labels=str(model.parent / "imagenet_labels.txt"), threads=1, top_k=3)


@pytest.fixture
def emulated(model: Path, frames: list[np.ndarray], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A recording of the model's outputs for the frames, SLOW seconds per invoke, switched on."""
    rec = tmp_path / "rec"
    rec.mkdir()
    assert emulation.record(Engine.load(model_cfg(model)), frames, rec / f"{model.stem}.npz", SLOW) == len(frames)
    monkeypatch.setenv(emulation.ENV, str(rec))
    return rec


def worker_for(lib: Path, model: Path, key: str = "cam", deadline: float = 5.0) -> DeviceWorker:
    w = DeviceWorker("t", None, str(lib), runtime="ai_edge_litert", deadline=deadline, probe_initial=30.0)
    w.register(key, str(model), 1)
    w.start()
    return w


def reference(model: Path, frames: list[np.ndarray]) -> list[list[tuple[int, float]]]:
    cpu = Engine.load(model_cfg(model))
    return [[(c.class_id, round(c.score, 4)) for c in cpu.process(f).classes or []] for f in frames]


def classes(out) -> list[tuple[int, float]]:  # type: ignore[no-untyped-def]
    return [(c.class_id, round(c.score, 4)) for c in out.classes or []]


def test_the_emulated_tpu_takes_its_time_and_gives_the_recorded_outputs(fake_lib, model, frames, emulated) -> None:
    worker = worker_for(fake_lib, model)
    try:
        tpu = Engine(model_cfg(model), WorkerBackend(worker, "cam"))
        outs = [tpu.process(f) for f in frames]
        assert [classes(o) for o in outs] == reference(model, frames)
        # the profile's time, slept in the child (each sleep is shortened by how late sleeps wake on average)
        assert all(o.invoke_seconds >= 0.9 * SLOW for o in outs), [o.invoke_seconds for o in outs]
        assert not (emulated / "misses.log").exists()
        # an input that was not recorded: real outputs (the CPU's), and the miss is written down
        other = np.ascontiguousarray(frames[0][::-1])
        assert classes(tpu.process(other)) == reference(model, [other])[0]
        assert len((emulated / "misses.log").read_text().splitlines()) == 1
    finally:
        worker.close()


def test_requests_are_in_flight_together_and_replies_match_them(fake_lib, model, frames, emulated) -> None:
    worker = worker_for(fake_lib, model)
    try:
        tpu = Engine(model_cfg(model), WorkerBackend(worker, "cam"))
        preparer = tpu.preparer()
        buffers = [np.empty(tpu.info.input.shape[1:], np.uint8) for _ in range(3)]
        t0 = time.monotonic()
        pending = [tpu.submit(preparer.prepare(f, b), f) for f, b in zip(frames[:3], buffers)]
        submitted = time.monotonic() - t0
        # three submits returned before even the first invoke could end: nobody waited for a reply
        assert submitted < SLOW, submitted
        outs = [p.result() for p in reversed(pending)]  # taken in any order, each gets its own reply
        assert [classes(o) for o in reversed(outs)] == reference(model, frames[:3])
        # the child held the next request while invoking: three invokes back to back, not three round trips
        # with a gap each (asserted as behaviour: each later reply came after the one before)
        answered = [p._call.answered for p in pending]
        assert answered == sorted(answered)
    finally:
        worker.close()


@pytest.mark.faults
@pytest.mark.parametrize("fault", ["SIGKILL", "SIGABRT", "hang"])
def test_a_fault_with_requests_in_flight_loses_none_of_their_frames(fault, fake_lib, model, frames, emulated) -> None:
    """Three frames in flight when the worker dies (or hangs past its deadline): each is run on the
    CPU twin, in order, with the CPU's own result; the next frame goes straight to the CPU."""
    worker = worker_for(fake_lib, model, deadline=1.0)
    try:
        engine = FailoverEngine("cam", model_cfg(model), worker, model)
        assert engine.accelerator == "edgetpu"
        preparer = engine.preparer()
        buffers = [np.empty(engine.info.input.shape[1:], np.uint8) for _ in range(4)]
        pending = [engine.submit(preparer.prepare(f, b), f) for f, b in zip(frames[:3], buffers)]
        pid = worker.pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP if fault == "hang" else getattr(signal, fault))
        outs = [p.result() for p in pending]
        assert [o.accelerator for o in outs] == ["cpu"] * 3
        assert [classes(o) for o in outs] == reference(model, frames[:3])
        assert engine.accelerator == "cpu"
        assert engine.last_reason == ("no result within 1 s; worker killed" if fault == "hang" else
                                      f"worker killed by {fault}")  # fmt: skip
        nxt = engine.submit(preparer.prepare(frames[3], buffers[3]), frames[3]).result()
        assert nxt.accelerator == "cpu" and classes(nxt) == reference(model, frames[3:4])[0]
        assert not worker.up
    finally:
        worker.close()


def test_a_stopped_worker_fails_requests_with_one_line_and_frees_its_slots(fake_lib, model, frames, emulated) -> None:
    worker = worker_for(fake_lib, model)
    try:
        tpu = Engine(model_cfg(model), WorkerBackend(worker, "cam"))
        pending = tpu.submit(None, frames[0])
        os.kill(worker.pid or 0, signal.SIGKILL)
        with pytest.raises(WorkerFailure, match="^worker killed by SIGKILL$"):
            pending.result()
        with pytest.raises(WorkerFailure, match="^worker killed by SIGKILL$"):
            tpu.submit(None, frames[1])
        m = worker.models["cam"]
        assert m.free is not None and m.free.qsize() == 3  # no slot is left held by a failed request
    finally:
        worker.close()
