"""edged.tracking: debounced occupancy both ways, counts, events new/update/end, end_all, stationary."""

from __future__ import annotations

from typing import List

import pytest
from test_tracking import DT, LEFT_HALF, RIGHT_HALF, H, W, ids, obj, person_at, run, scene

from edged.tracking import SceneUpdate, TrackEvent

T0 = 1000.0


def counts(ups: List[SceneUpdate], key: tuple) -> List[int]:
    return [u.occupancy.get(key, 0) for u in ups]


def test_enter_after_n_frames_and_t_seconds_not_before() -> None:
    s = scene({"min_hits": 1}, {"left": {**LEFT_HALF, "enter_frames": 3, "enter_seconds": 0.5}})
    ups = run(s, [[person_at(100)]] * 8)
    assert counts(ups, ("left", "person")) == [0, 0, 0, 0, 0, 1, 1, 1]  # 3 frames by frame 2, 0.5 s at frame 5
    assert counts(ups, (None, "person")) == [0, 1, 1, 1, 1, 1, 1, 1]  # the frame: objects' enter_frames 2
    assert [bool(u.changed) for u in ups] == [False, True, False, False, False, True, False, False]
    assert ups[5].changed == {("left", "person"), ("left", None)}
    frames_only = scene({"min_hits": 1}, {"left": {**LEFT_HALF, "enter_frames": 3}})
    assert counts(run(frames_only, [[person_at(100)]] * 4), ("left", None)) == [0, 0, 1, 1]


def test_a_broken_streak_starts_again() -> None:
    s = scene({"min_hits": 1, "max_missed_frames": 10}, {"left": {**LEFT_HALF, "enter_frames": 3}})
    frames = [[person_at(x)] for x in (318, 318, 322, 318, 318, 318)]  # out of x < 320 at frame 2
    assert counts(run(s, frames), ("left", None)) == [0, 0, 0, 0, 0, 1]


def test_leave_after_t_seconds_out_not_before() -> None:
    s = scene({"min_hits": 1, "enter_frames": 1}, {"left": {**LEFT_HALF, "leave_seconds": 1.0}})
    frames = [[person_at(310 + 5 * i)] for i in range(18)]  # out of the left half (x < 320) from frame 3
    ups = run(s, frames)
    got = counts(ups, ("left", "person"))
    assert got[:3] == [1, 1, 1]
    assert got[3:13] == [1] * 10  # out since 1000.3: still counted until 1001.3
    assert got[13:] == [0] * 5
    assert ups[13].changed == {("left", "person"), ("left", None)}
    assert ids(ups[17]) == [1] and ups[17].objects[0].zones == ()


def test_a_flicker_shorter_than_leave_seconds_does_not_toggle() -> None:
    s = scene({"min_hits": 1, "enter_frames": 1, "max_missed_frames": 10, "leave_seconds": 1.0}, {"left": LEFT_HALF})
    frames = [[person_at(318)]] * 3 + [[person_at(322)]] * 4 + [[person_at(318)]] * 2  # out 0.4 s
    frames += [[]] * 5 + [[person_at(318)]] * 2  # undetected 0.5 s
    ups = run(s, frames)
    assert counts(ups, ("left", "person")) == [1] * len(frames)
    assert counts(ups, (None, None)) == [1] * len(frames)
    assert all(not u.changed for u in ups[1:])
    assert {i for u in ups for i in ids(u)} == {1}


def test_two_objects_of_one_label_count_two() -> None:
    s = scene({"min_hits": 1, "enter_frames": 1, "leave_seconds": 0}, {"left": LEFT_HALF, "right": RIGHT_HALF})
    ups = run(s, [[person_at(100), person_at(200)], [person_at(100), person_at(200), obj("car", 400, 200, 500, 300)],
                  [person_at(100), person_at(420)]])  # fmt: skip
    assert ups[0].occupancy[("left", "person")] == 2 and ups[0].occupancy[(None, None)] == 2
    assert ups[1].occupancy[("right", "car")] == 1 and ups[1].occupancy[("right", None)] == 1
    assert ups[1].occupancy[(None, None)] == 3 and ups[1].occupancy[(None, "person")] == 2
    last = ups[2].occupancy
    assert (last[("left", "person")], last[("right", "person")], last[("right", "car")]) == (1, 1, 0)
    assert ("right", "car") in ups[2].changed and ("left", "person") in ups[2].changed


def test_a_track_lost_and_seen_again_under_a_new_id_is_not_counted_twice() -> None:
    s = scene({"min_hits": 1, "enter_frames": 1, "max_missed_frames": 1, "leave_seconds": 2.0}, {"left": LEFT_HALF})
    ups = run(s, [[person_at(100)]] * 2 + [[]] * 3 + [[person_at(100)]] * 3)
    assert ids(ups[5]) == [2]  # the first track ended at frame 3
    assert counts(ups, ("left", "person")) == [1] * 8  # the ended track's place was taken by the new one


def _events(ups: List[SceneUpdate]) -> List[TrackEvent]:
    return [e for u in ups for e in u.events]


def test_events_new_update_end_with_entered_zones_and_best_score() -> None:
    zones = {"left": {**LEFT_HALF, "leave_seconds": 0}, "right": {**RIGHT_HALF, "leave_seconds": 1.0}}
    s = scene({"min_hits": 2, "enter_frames": 1, "max_missed_frames": 2}, zones)
    scores = [0.6, 0.7, 0.95, 0.8, 0.8, 0.7]
    xs = [300, 310, 315, 325, 330, 335]  # left of x = 320, then right
    ups = run(s, [[person_at(x, score=sc)] for x, sc in zip(xs, scores)] + [[]] * 3)
    evs = _events(ups)
    assert [e.type for e in evs] == ["new", "update", "end"]
    new, upd, end = evs
    assert new.id == upd.id == end.id and new.track_id == 1 and new.stream == "cam" and new.label == "person"
    assert new.start == pytest.approx(T0 + DT) and new.zones == ("left",) and new.entered_zones == ("left",)
    assert upd.zones == ("right",) and upd.entered_zones == ("left", "right")
    assert upd.best_score == 0.95 and upd.best_time == pytest.approx(T0 + 2 * DT) and upd.score == 0.8
    assert end.end == pytest.approx(T0 + 5 * DT) and end.frames == 6 and end.best_score == 0.95
    assert end.entered_zones == ("left", "right") and end.best_box == person_at(315).box
    assert [u.best for u in ups[:4]] == [[], [new.id], [new.id], []]
    d = end.to_dict()
    assert d["type"] == "end" and d["best_box"]["xmin"] == 295 and d["entered_zones"] == ["left", "right"]
    assert len(new.id.split("-")[1]) == 6 and new.id.startswith(f"{T0 + DT:.6f}-")


def test_a_better_score_alone_updates_at_most_once_per_interval() -> None:
    s = scene({"min_hits": 1}, events={"update_interval_seconds": 1.0})
    ups = run(s, [[person_at(100, score=0.5 + 0.01 * i)] for i in range(35)])
    evs = _events(ups)
    times = [round(T0 + i * DT, 6) for i, u in enumerate(ups) for _ in u.events]
    assert [e.type for e in evs] == ["new", "update", "update", "update"]
    assert times == pytest.approx([T0, T0 + 1.0, T0 + 2.0, T0 + 3.0])
    assert evs[-1].best_score == pytest.approx(0.5 + 0.01 * 30)
    assert all(u.best for u in ups)  # every frame was its best so far
    flat = scene({"min_hits": 1}, events={"update_interval_seconds": 1.0})
    assert [e.type for e in _events(run(flat, [[person_at(100, score=0.8)]] * 30))] == ["new"]


def test_events_disabled_send_none_but_occupancy_counts() -> None:
    s = scene({"min_hits": 1, "enter_frames": 1}, events={"enabled": False})
    ups = run(s, [[person_at(100)]] * 3 + [[]] * 25)
    assert not _events(ups) and not any(u.best for u in ups)
    # undetected from frame 3 (1000.3), the track ends at frame 8; counted until 2 s out (leave_seconds)
    assert counts(ups, (None, None)) == [1] * 23 + [0] * 5


def test_end_all_ends_every_event_and_zeroes_every_count_at_once() -> None:
    s = scene({"min_hits": 1, "enter_frames": 1, "leave_seconds": 30}, {"left": LEFT_HALF})
    run(s, [[person_at(100), obj("car", 400, 200, 500, 300)]] * 3)
    u = s.end_all(T0 + 5)
    assert sorted((e.type, e.track_id, e.end) for e in u.events) == [("end", 1, T0 + 5), ("end", 2, T0 + 5)]
    assert set(u.occupancy.values()) == {0}
    assert u.changed == {(None, None), (None, "person"), (None, "car"), ("left", None), ("left", "person")}
    assert s.end_all(T0 + 6).events == [] and s.end_all(T0 + 6).changed == set()
    again = s.update([person_at(100)], W, H, T0 + 10)
    assert ids(again) == [3] and [e.type for e in again.events] == ["new"]


def _jitter(i: int) -> float:
    return (i % 3) - 1  # -1, 0, 1 pixels


def test_stationary_after_stationary_seconds_and_not_once_it_moves() -> None:
    s = scene({"min_hits": 1, "stationary_seconds": 2.0})
    frames = [[person_at(200 + _jitter(i))] for i in range(25)] + [[person_at(200 + 10 * i)] for i in range(1, 4)]
    ups = run(s, frames)
    flags = [u.objects[0].stationary for u in ups]
    assert flags[:20] == [False] * 20 and flags[20:25] == [True] * 5  # still since 1000.0: stationary at 1002.0
    assert flags[25:] == [False] * 3
    evs = _events(ups)
    assert [(e.type, e.stationary) for e in evs] == [("new", False), ("update", True), ("update", False)]


def test_a_label_that_does_not_count_its_stationary_objects() -> None:
    """A parked car: tracked, flagged, its event goes on, but it stops counting (after leave_seconds)."""
    cfg = {"min_hits": 1, "stationary_seconds": 2.0, "leave_seconds": 0.5, "enter_frames": 1}
    cfg["filters"] = {"person": {"count_stationary": False}}
    frames = [[person_at(200 + _jitter(i))] for i in range(40)] + [[person_at(200 + 10 * i)] for i in range(1, 4)]
    ups = run(scene(cfg), frames)
    got = counts(ups, (None, "person"))
    flags = [u.objects[0].stationary for u in ups]
    assert flags[20] and not flags[19]  # stationary from frame 20 (2 s at 10 frames a second)
    assert got[:20] == [1] * 20 and got[26:40] == [0] * 14  # counted until then, gone 0.5 s after
    assert got[-1] == 1  # it moves: it counts again
    assert [u.objects[0].track_id for u in ups] == [1] * len(ups)  # the same track throughout
    counted = run(scene({**cfg, "filters": {}}), frames)  # the default counts stationary objects
    assert counts(counted, (None, "person")) == [1] * len(frames)
