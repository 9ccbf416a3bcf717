"""A detector stream's scene in the publish thread: results tracked, snapshots written, the
scene ended when detection is switched off or no result comes for a while."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from support.sinks import Collect
from support.wait import wait_for

from edged.config import config_from_dict
from edged.result import Box, Object, Result
from edged.stream import publish
from edged.stream.publish import Publisher
from edged.stream.scene import StreamScene
from edged.stream.switch import DetectSwitch
from edged.tracking import SnapshotStore

ROOT = Path(__file__).resolve().parent.parent


def stream_cfg(**extra: object):
    raw = {
        "id": "porch",
        "source": {"type": "synthetic"},
        "model": {"path": str(ROOT / "models" / "digits_detector_int8.tflite")},
        "objects": {"track": ["3"], "min_hits": 2, "leave_seconds": 0.5},
        "zones": {"door": {"coordinates": [[0, 0.5], [0.5, 0.5], [0.5, 1], [0, 1]]}},
        **extra,
    }
    return config_from_dict({"streams": [raw]}).streams[0]


def result(seq: int, t: float, boxes: list[tuple[float, float, float, float, float]]) -> Result:
    objects = [Object(3, "3", s, Box(x0, y0, x1, y1)) for x0, y0, x1, y1, s in boxes]
    return Result("porch", seq, t, "m", "cpu", "detection", 640, 480, objects=objects)


def frame(value: int) -> np.ndarray:
    return np.full((480, 640, 3), value, np.uint8)


@pytest.mark.faults
def test_results_come_back_tracked_and_snapshots_are_written(tmp_path: Path) -> None:
    """Found: ``objects[].id`` was the class id, so two objects of one class in a frame were the same
    ``"id"``; now each has its ``class_id`` and, once tracked, a ``track_id`` of its own."""
    store = SnapshotStore(tmp_path, 10, 10_000_000, 3600.0, stream="porch")
    scene = StreamScene(stream_cfg(), store)
    delivered: list = []
    assert scene.writer is not None
    scene.writer.deliver = delivered.append  # (the publisher's: to every sink, from the writer's thread)
    t0 = 1_000_000.0
    reports = []
    for i in range(6):
        r = result(i, t0 + i * 0.1, [(60, 300, 190, 430, 0.8 + 0.02 * i), (500, 10, 520, 30, 0.9)])
        reports.append(scene.observe(r, frame(i)))
        # only tracked labels stay; a confirmed track's object carries its id and zones
        assert all(o.label == "3" for o in r.objects) and len(r.objects) == 2
    assert [o.track_id for o in r.objects] == [1, 2] and r.objects[0].zones == ("door",)
    new = [e for rep in reports for e in rep.events if e.type == "new"]
    assert [e.track_id for e in new] == [1, 2]
    assert reports[-1].occupancy[("door", "3")] == 1 and reports[-1].occupancy[(None, "3")] == 2
    wait_for(lambda: len(delivered) == 2, 5, "the two new events' snapshots")  # written off this thread
    snap = delivered[0].snapshot
    assert snap.jpeg[:2] == b"\xff\xd8" and Path(snap.path).is_file()
    assert delivered[0].events == () and delivered[0].occupancy == {}  # a snapshot alone: no stale state
    # the end writes the best frame again when a better one came: track 1's score rose every frame,
    # track 2's stayed (its snapshot from the start shows its best already)
    end = scene.end_all(t0 + 1)
    assert {e.type for e in end.events} == {"end"} and end.occupancy[(None, None)] == 0
    scene.close()  # writes what waits
    assert len(delivered) == 3 and delivered[-1].snapshot.event_id == new[0].id
    assert Path(delivered[-1].snapshot.path).read_bytes() == delivered[-1].snapshot.jpeg
    assert len(list((tmp_path / "porch").glob("*.jpg"))) == 2 and scene.writer.written == 3


def test_a_snapshot_that_cannot_be_written_is_said_once_and_events_go_on(tmp_path: Path, caplog) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    scene = StreamScene(stream_cfg(), SnapshotStore(blocker, 10, 10_000_000, 3600.0, stream="porch"))
    events = []
    for i in range(4):
        events += scene.observe(result(i, 100.0 + i, [(60, 300, 190, 430, 0.9)]), frame(i)).events
    events += scene.end_all(110.0).events
    scene.close()
    assert [e.type for e in events if e.type != "update"] == ["new", "end"]
    said = [r for r in caplog.records if "cannot save the snapshot" in r.getMessage()]
    assert len(said) == 1 and "\n" not in said[0].getMessage(), [r.getMessage() for r in said]


def test_snapshots_never_hold_up_the_publish_thread(tmp_path: Path, monkeypatch) -> None:
    """A writer that falls behind skips the newest (counted, said once), and a writer's failure is
    reported, not a silent end of its thread."""
    import threading

    from edged.stream import snapshots

    gate = threading.Event()
    store = SnapshotStore(tmp_path, 100, 10_000_000, 3600.0, stream="porch")
    save = store.save
    monkeypatch.setattr(store, "save", lambda *a: (gate.wait(5), save(*a))[1])
    writer = snapshots.SnapshotWriter("porch", store)
    ev = StreamScene(stream_cfg()).tracker  # (any event will do: make some)
    evs = [e for i in range(3) for e in ev.update([Object(3, "3", 0.9, Box(10 + 200 * i, 300, 150 + 200 * i, 440))
                                                   for i in range(3)], 640, 480, 100.0 + i).events]  # fmt: skip
    t0 = time.monotonic()
    writer.submit(evs[0], frame(0))
    wait_for(writer._queue.empty, 5, "the writer to take the first")  # it now waits on the gate
    for e in (evs * 3)[1:]:  # 8 more submissions while the first write waits
        writer.submit(e, frame(0))
    assert time.monotonic() - t0 < 0.5  # never waits
    assert writer.skipped == 9 - 1 - snapshots.PENDING  # one being written, PENDING waiting
    gate.set()
    writer.close()
    assert writer.written == 1 + snapshots.PENDING
    errors: list = []
    writer = snapshots.SnapshotWriter("porch", store)
    writer.report = lambda stage, exc: errors.append((stage, str(exc)))
    monkeypatch.setattr(store, "save", lambda *a: 1 / 0)
    writer.submit(evs[0], frame(0))
    writer.submit(evs[0], frame(0))
    writer.close()
    assert errors == [("track", "division by zero")] * 2  # each said, the thread went on


def publisher(scene: StreamScene, switch: DetectSwitch, sink: Collect) -> Publisher:
    from edged.metrics import Metrics

    class Engine:  # the publisher only reads info when a result is built: never here
        info = None

    return Publisher("porch", Engine(), [sink], Metrics().stream("porch"), lambda s, e: None, lambda b: None, scene,
                     switch)  # fmt: skip


def occupied(scene: StreamScene) -> None:
    for i in range(4):
        scene.observe(result(i, 100.0 + i * 0.1, [(60, 300, 190, 430, 0.9)]), frame(i))
    assert scene.tracker.occupancy.counts[("door", "3")] == 1


def test_switching_detection_off_ends_the_scene_at_once() -> None:
    scene, switch, sink = StreamScene(stream_cfg()), DetectSwitch("porch"), Collect()
    occupied(scene)
    p = publisher(scene, switch, sink)
    p.times.append(time.monotonic())
    p._watch_switch()
    assert not sink.scenes  # detection on, a result just now: nothing ends
    switch.set(False, "a test")
    p._watch_switch()
    p._watch_switch()  # once
    assert len(sink.scenes) == 1 and [e.type for e in sink.events()] == ["end"]
    assert all(v == 0 for v in sink.scenes[0].occupancy.values()) and ("door", "3") in sink.scenes[0].changed


def test_no_result_for_a_while_ends_the_scene(monkeypatch) -> None:
    """A camera lost: counts must not stay on for a scene nobody sees any more."""
    monkeypatch.setattr(publish, "SCENE_IDLE_SECONDS", 0.2)
    scene, sink = StreamScene(stream_cfg()), Collect()
    occupied(scene)
    p = publisher(scene, DetectSwitch("porch"), sink)
    p.times.append(time.monotonic())
    p._watch_switch()
    assert not sink.scenes
    time.sleep(0.25)
    p._watch_switch()
    assert [e.type for e in sink.events()] == ["end"] and sink.scenes[0].occupancy[(None, None)] == 0


@pytest.mark.system  # a stream's three threads, the bundled detector on the demo's scene
def test_a_stream_started_with_detection_off_infers_nothing_until_switched_on() -> None:
    cfg = config_from_dict(
        {
            "streams": [
                {
                    "id": "demo",
                    "source": {"type": "synthetic", "fps": 30, "digits": "many", "hold_frames": 15},
                    "model": {
                        "path": str(ROOT / "models" / "digits_detector_int8.tflite"),
                        "labels": str(ROOT / "models" / "digits_labels.txt"),
                    },
                    "detect": False,
                    "sinks": [],
                }
            ]
        }
    )
    from edged.daemon.wiring import build_stream
    from edged.metrics import Metrics

    stream = build_stream(cfg.streams[0], Metrics())
    sink = Collect()
    stream.sinks.append(sink)
    with stream:
        wait_for(lambda: stream.source.frames_read >= 20, 10, "frames read with detection off")
        assert not sink.results and not stream.has_result()  # the camera is read, nothing inferred
        assert stream.switch.set(True, "a test")
        wait_for(lambda: len(sink.events()) >= 2, 20, "results and events once switched on")
        assert sink.results and all(o.track_id is None or o.track_id >= 1 for r in sink.results for o in r.objects)
        stream.switch.set(False, "a test")
        wait_for(lambda: sink.events()[-1].type == "end" and not any(sink.scenes[-1].occupancy.values()), 10, "ended")
