"""The stream in-process: newest frame wins, drops are counted, metrics agree with results."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.sinks import Collect
from support.wait import wait_for

from edged.config import config_from_dict
from edged.daemon.wiring import build_stream
from edged.metrics import Metrics
from edged.sources.base import Frame
from edged.stream import LatestSlot, ReadyFrame


def _frame(seq: int) -> ReadyFrame:
    frame = Frame(np.zeros((2, 2, 3), np.uint8), seq, time.time(), time.monotonic(), 0.0)
    return ReadyFrame(frame, None, time.monotonic())  # type: ignore[arg-type]  # the slot never looks inside


def test_latest_slot_newest_wins_and_counts_replacements() -> None:
    slot = LatestSlot()
    assert slot.put(_frame(0)) is None
    dropped = slot.put(_frame(1))  # frame 0 was never taken: dropped, and handed back
    assert dropped is not None and dropped.frame.seq == 0
    dropped = slot.put(_frame(2))
    assert dropped is not None and dropped.frame.seq == 1
    got = slot.take(0.1)
    assert got is not None and got.frame.seq == 2
    assert slot.take(0.01) is None  # nothing queued behind it
    slot.end()
    assert slot.ended and slot.take(0.01) is None


def test_latest_slot_take_wakes_on_put() -> None:
    slot = LatestSlot()
    threading.Timer(0.05, lambda: slot.put(_frame(7))).start()
    t0 = time.monotonic()
    got = slot.take(2.0)
    assert got is not None and got.frame.seq == 7 and time.monotonic() - t0 < 1.0


def _samples(metrics: Metrics) -> dict[tuple[str, tuple], float]:
    out = {}
    for fam in text_string_to_metric_families(metrics.exposition().decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_fast_source_slow_model_drops_instead_of_queueing(models_dir: Path, images_dir: Path) -> None:
    cfg = config_from_dict(
        {
            "streams": [
                {
                    "id": "fast",
                    "source": {"type": "images", "path": str(images_dir / "cat_720p.jpg"), "fps": 300, "loop": True},
                    "model": {
                        "path": str(models_dir / "mobilenet_v2_1.0_224_quant.tflite"),
                        "labels": str(models_dir / "imagenet_labels.txt"),
                        "threads": 1,
                    },
                    "sinks": [],
                }
            ]
        }
    )
    metrics = Metrics()
    stream = build_stream(cfg.streams[0], metrics)
    sink = Collect()
    stream.sinks.append(sink)
    with stream:
        wait_for(
            lambda: stream.metrics.processed >= 15 and stream.metrics.dropped >= 5,
            20,
            lambda: f"15 frames processed and 5 dropped ({stream.metrics.processed}, {stream.metrics.dropped})",
            interval=0.05,
        )
    assert stream.metrics.processed >= 15 and stream.metrics.dropped >= 5, (
        stream.metrics.processed,
        stream.metrics.dropped,
    )
    produced = stream.source.frames_read
    # every produced frame was either processed, dropped, or is the one left in the slot at shutdown
    assert produced - 1 <= stream.metrics.processed + stream.metrics.dropped <= produced
    # results come in increasing sequence order with gaps where frames were dropped
    seqs = [r.seq for r in sink.results]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert all(r.classes and r.classes[0].label == "Egyptian cat" for r in sink.results)
    m = _samples(metrics)
    assert m[("edged_frames_total", (("outcome", "processed"), ("stream", "fast")))] == stream.metrics.processed
    assert m[("edged_frames_total", (("outcome", "dropped"), ("stream", "fast")))] == stream.metrics.dropped
    for stage in ("queue", "preprocess", "inference", "postprocess", "publish"):
        assert (
            m[("edged_stage_duration_seconds_count", (("stage", stage), ("stream", "fast")))]
            == stream.metrics.processed
        )
    assert m[("edged_frame_latency_seconds_count", (("stream", "fast"),))] == stream.metrics.processed
    # frame age stays bounded: a frame waits at most about one inference in the slot
    queue_sum = m[("edged_stage_duration_seconds_sum", (("stage", "queue"), ("stream", "fast")))]
    infer_sum = m[("edged_stage_duration_seconds_sum", (("stage", "inference"), ("stream", "fast")))]
    assert queue_sum / stream.metrics.processed < 3 * infer_sum / stream.metrics.processed + 0.05


def test_result_schema_and_truth_from_synthetic_source() -> None:
    from edged.config import default_config

    cfg = default_config()
    stream = build_stream(cfg.streams[0], Metrics())
    sink = Collect()
    stream.sinks = [sink]
    with stream:
        assert stream.first_result.wait(10)
    r = sink.results[0].to_dict()
    assert r["schema"] == 1 and r["stream"] == "demo" and r["accelerator"] == "cpu"
    assert r["task"] == "detection" and r["frame"] == {"width": 640, "height": 480}
    assert set(r["latency_ms"]) == {"capture", "queue", "preprocess", "inference", "postprocess", "total"}
    digits = [str(d) for d in range(10)]
    assert 1 <= len(r["truth"]["objects"]) <= 4
    for t in r["truth"]["objects"]:
        assert t["label"] in digits and set(t["box"]) == {"xmin", "ymin", "xmax", "ymax"}
        assert 0 <= t["box"]["xmin"] < t["box"]["xmax"] <= 640 and 0 <= t["box"]["ymin"] < t["box"]["ymax"] <= 480
    assert r["objects"] and all(o["label"] in digits and o["score"] >= 0.5 for o in r["objects"])


def test_inference_error_is_counted_and_stream_keeps_running(models_dir: Path) -> None:
    cfg = config_from_dict(
        {
            "streams": [
                {
                    "id": "err",
                    "source": {"type": "synthetic", "fps": 50},
                    "model": {"path": str(models_dir / "mobilenet_v1_0.25_128_quant.tflite")},
                    "sinks": [],
                }
            ]
        }
    )
    metrics = Metrics()
    stream = build_stream(cfg.streams[0], metrics)
    real = stream.engine.submit
    calls = {"n": 0}

    def flaky(*args, **kwargs):  # the first three inferences fail, as a failing accelerator would
        calls["n"] += 1
        if calls["n"] <= 3:
            raise RuntimeError("invoke failed")
        return real(*args, **kwargs)

    stream.engine.submit = flaky  # type: ignore[method-assign]
    with stream:
        wait_for(lambda: stream.metrics.processed >= 3, 10, "3 frames processed", interval=0.05)
    assert stream.metrics.processed >= 3 and stream.state in ("stopped", "running")
    assert _samples(metrics)[("edged_stream_errors_total", (("stage", "inference"), ("stream", "err")))] == 3
    assert stream.last_error == "inference: invoke failed"


@pytest.mark.faults
@pytest.mark.parametrize("role", ["capture", "infer", "publish"])
def test_a_crashed_stream_thread_is_said_and_started_again(role: str) -> None:
    """An exception that escapes a stream's loop: the stream is failed (health, counter, log) and
    its thread starts again by itself, results flowing once more."""
    from edged.config import default_config
    from edged.daemon import views
    from edged.health import HealthBoard

    metrics = Metrics()
    stream = build_stream(default_config().streams[0], metrics)
    sink = Collect()
    stream.sinks.append(sink)
    slot, crashes = stream.slot, {"n": 0}
    owner, name = {"capture": (slot, "put"), "infer": (slot, "take"), "publish": (stream.publisher, "_complete")}[role]
    real = getattr(owner, name)

    def broken(*args: Any) -> Any:  # the first call after the first result raises, once
        if stream.first_result.is_set() and not crashes["n"]:
            crashes["n"] += 1
            raise RuntimeError("injected")
        return real(*args)

    setattr(owner, name, broken)
    with stream:
        wait_for(lambda: crashes["n"], 10, "the injected crash")
        # failed for the 0.5 s before its thread starts again: health says so meanwhile
        wait_for(lambda: stream.state == "failed", 5, "the stream marked failed")
        assert not views.health([stream], HealthBoard())[0]
        assert stream.last_error == f"{role} thread crashed: RuntimeError: injected"
        n = len(sink.results)
        wait_for(lambda: stream.state == "running" and len(sink.results) > n + 5, 10, "results after the restart")
        assert views.health([stream], HealthBoard())[0]
    errors = _samples(metrics)[("edged_stream_errors_total", (("stage", "thread"), ("stream", "demo")))]
    assert errors == 1
