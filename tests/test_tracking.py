"""edged.tracking on scripted detections: ids through missed frames and crossings, filters,
masks, zones, debounced occupancy, events, end_all, stationary objects."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import pytest

from edged.result import Box, Object
from edged.tracking import EventsConfig, MaskConfig, ObjectsConfig, SceneTracker, SceneUpdate, ZoneConfig

W, H = 640, 480
DT = 0.1  # 10 frames a second


def obj(label: str, x0: float, y0: float, x1: float, y1: float, score: float = 0.9) -> Object:
    return Object({"person": 0, "car": 2}.get(label, 9), label, score, Box(x0, y0, x1, y1))


def person_at(x: float, y: float = 300, score: float = 0.9, w: float = 40, h: float = 80) -> Object:
    """A person whose bottom centre is at (x, y)."""
    return obj("person", x - w / 2, y - h, x + w / 2, y, score)


def scene(
    objects: Optional[Dict[str, Any]] = None,
    zones: Optional[Dict[str, Dict[str, Any]]] = None,
    masks: Sequence[Dict[str, Any]] = (),
    events: Optional[Dict[str, Any]] = None,
) -> SceneTracker:
    return SceneTracker(
        "cam",
        ObjectsConfig.model_validate(objects or {}),
        {name: ZoneConfig.model_validate(z) for name, z in (zones or {}).items()},
        [MaskConfig.model_validate(m) for m in masks],
        EventsConfig.model_validate(events or {}),
    )


def run(s: SceneTracker, frames: Sequence[Sequence[Object]], t0: float = 1000.0) -> List[SceneUpdate]:
    return [s.update(list(f), W, H, t0 + i * DT) for i, f in enumerate(frames)]


def ids(u: SceneUpdate) -> List[Optional[int]]:
    return [o.track_id for o in u.objects]


LEFT_HALF = {"coordinates": [[0, 0], [0.5, 0], [0.5, 1], [0, 1]]}
RIGHT_HALF = {"coordinates": [[0.5, 0], [1, 0], [1, 1], [0.5, 1]]}


# --- tracking ----------------------------------------------------------------------------------


def test_a_new_track_is_confirmed_after_min_hits_and_ids_increase() -> None:
    s = scene({"min_hits": 3})
    ups = run(s, [[person_at(100)], [person_at(105)], [person_at(110)], [person_at(115)]])
    assert [ids(u) for u in ups] == [[None], [None], [1], [1]]
    assert [o.track_id for o in s.update([person_at(120), person_at(400)], W, H, 2000).objects] == [1, None]


def test_one_or_two_missed_frames_keep_the_id_more_end_the_track() -> None:
    s = scene({"max_missed_frames": 2})
    frames: List[List[Object]] = [[person_at(100 + 10 * i)] for i in range(4)]
    frames += [[], []]  # missed twice, moving on meanwhile
    frames += [[person_at(160 + 10 * i)] for i in range(3)]
    frames += [[], [], []]  # missed three times: the track ends
    frames += [[person_at(250)], [person_at(260)]]
    ups = run(s, frames)
    assert ids(ups[3]) == [1] and ids(ups[6]) == [1] and ids(ups[8]) == [1]
    ends = [(i, e) for i, u in enumerate(ups) for e in u.events if e.type == "end"]
    assert [i for i, _ in ends] == [11]
    assert ends[0][1].end == pytest.approx(1000 + 8 * DT)  # when it was last seen
    assert ids(ups[13]) == [2]


def test_two_objects_crossing_keep_their_ids_even_merged_into_one_detection() -> None:
    s = scene({"min_hits": 1})
    frames = []
    for i in range(41):
        a, b = person_at(100 + 10 * i), person_at(500 - 10 * i)  # they meet at i = 20
        frames.append([a] if i == 20 else [a, b])  # at the crossing the detector sees one box
    ups = run(s, frames)
    assert ids(ups[0]) == [1, 2]
    for i in list(range(0, 20)) + list(range(21, 41)):
        assert ids(ups[i]) == [1, 2], f"frame {i}: {ids(ups[i])}"
    assert ups[40].objects[0].box.xmin > ups[40].objects[1].box.xmin  # 1 went right, 2 left
    assert not [e for u in ups for e in u.events if e.type == "end"]
    third = s.update([person_at(300, 150), person_at(510), person_at(90)], W, H, 1000 + 41 * DT)
    assert ids(third) == [3, 1, 2]


def test_labels_are_tracked_apart() -> None:
    s = scene({"min_hits": 1})
    ups = run(s, [[person_at(100)], [obj("car", 80, 220, 120, 300)], [person_at(100)]])
    assert ids(ups[0]) == [1] and ids(ups[1]) == [2]  # same place, another label: another track
    assert ids(ups[2]) == [1]


def test_low_score_detections_continue_tracks_but_start_none() -> None:
    s = scene({"min_hits": 1, "new_track_score": 0.5})
    ups = run(s, [[person_at(100, score=0.9)], [person_at(110, score=0.3), person_at(400, score=0.3)]])
    assert ids(ups[1]) == [1, None]
    assert [o.score for o in ups[1].objects] == [0.3, 0.3]


# --- filters, masks, zones ---------------------------------------------------------------------


def test_filters_per_label_and_star() -> None:
    frame_area = W * H  # 307200; person: 0.002 -> 614.4 px, 0.5 -> 153600 px
    filters = {"person": {"min_score": 0.6, "min_area": 0.002, "max_area": 0.5}, "*": {"min_score": 0.3}}
    s = scene({"filters": filters, "track": ["person", "car", "dog"]})
    kept = s.update(
        [
            obj("person", 0, 0, 40, 80, 0.55),  # score too low for a person
            obj("person", 0, 0, 20, 30, 0.9),  # 600 px < 614.4
            obj("person", 0, 0, 500, 320, 0.9),  # 160000 px > 153600
            obj("person", 100, 100, 140, 180, 0.61),  # kept
            obj("car", 200, 200, 204, 204, 0.35),  # "*": only the score
            obj("car", 300, 300, 350, 350, 0.25),  # below "*"
            obj("bus", 10, 10, 90, 90, 0.99),  # not tracked
        ],
        W,
        H,
        0.0,
    ).objects
    assert frame_area * 0.002 > 600
    assert [(o.label, o.score) for o in kept] == [("person", 0.61), ("car", 0.35)]
    pixels = scene({"filters": {"*": {"min_area": 2000, "max_area": 5000}}})
    sizes = [pixels.update([obj("dog", 0, 0, s, s)], W, H, 1.0).objects for s in (40, 50, 70, 80)]
    assert [len(k) for k in sizes] == [0, 1, 1, 0]  # 1600, 2500, 4900, 6400 px


def test_masks_drop_detections_by_their_bottom_centre() -> None:
    s = scene(masks=[{"coordinates": [[0, 0], [200, 0], [200, 80], [0, 80]]}])
    kept = s.update([obj("person", 80, 10, 120, 70), obj("person", 80, 10, 120, 90), obj("car", 300, 0, 340, 40)],
                    W, H, 0.0).objects  # fmt: skip
    assert [o.box.ymax for o in kept] == [90, 40]


def test_zones_in_fractions_follow_the_frame_size_pixels_do_not() -> None:
    px = {"coordinates": [[0, 0], [400, 0], [400, 480], [0, 480]]}
    s = scene({"min_hits": 1, "enter_frames": 1, "leave_seconds": 0}, {"frac": RIGHT_HALF, "px": px})
    u = s.update([person_at(500, 300)], 640, 480, 0.0)
    assert ids(u) == [1] and u.objects[0].zones == ("frac",)  # 500 > 320, not < 400
    u = s.update([person_at(250, 150, w=20, h=40)], 320, 240, 0.1)  # the source came back at half the size
    assert ids(u) == [1]  # the track followed the new size
    assert u.objects[0].zones == ("frac", "px")  # 250 > 160 (half of 320); pixels stay: 250 < 400
    assert u.occupancy[("px", None)] == 1 and u.occupancy[("frac", None)] == 1


def test_units_auto_pixels_fractions() -> None:
    tiny = {"coordinates": [[0, 0], [1, 0], [1, 1], [0, 1]], "units": "pixels"}
    s = scene({"min_hits": 1, "enter_frames": 1}, {"all": {"coordinates": tiny["coordinates"]}, "tiny": tiny})
    assert s.update([person_at(320, 400)], W, H, 0.0).objects[0].zones == ("all",)
    with pytest.raises(ValueError, match="fractions of the frame are <= 1"):
        ZoneConfig.model_validate({"coordinates": [[0, 0], [2, 0], [2, 2]], "units": "fractions"})


@pytest.mark.parametrize(("anchor", "inside"), [("top_center", True), ("center", False), ("bottom_center", False)])
def test_the_anchor_decides_membership(anchor: str, inside: bool) -> None:
    band = {"coordinates": [[0, 0], [640, 0], [640, 100], [0, 100]], "anchor": anchor}
    s = scene({"min_hits": 1, "enter_frames": 1}, {"band": band})
    u = s.update([obj("person", 300, 50, 340, 250)], W, H, 0.0)  # top 50, centre 150, bottom 250
    assert u.objects[0].zones == (("band",) if inside else ())


def test_a_zone_counts_only_its_labels() -> None:
    s = scene({"min_hits": 1, "enter_frames": 1}, {"drive": {**LEFT_HALF, "labels": ["car"]}})
    u = s.update([person_at(100), obj("car", 50, 200, 150, 300)], W, H, 0.0)
    assert [o.zones for o in u.objects] == [(), ("drive",)]
    assert u.occupancy[("drive", "car")] == 1 and u.occupancy[("drive", None)] == 1
    assert ("drive", "person") not in u.occupancy and u.occupancy[(None, None)] == 2
    assert s.zones() == {"drive": ("car",)} and s.labels() == ["person", "car"]
    assert u.labels_added == ["person", "car"]
    assert s.update([person_at(100), obj("dog", 400, 10, 450, 60)], W, H, 0.1).labels_added == ["dog"]
    assert s.labels() == ["person", "car", "dog"] and (None, "dog") in s.update([], W, H, 0.2).occupancy
    listed = scene({"track": ["person", "car"]})
    assert listed.labels() == ["person", "car"] and listed.update([person_at(100)], W, H, 0).labels_added == []


def test_a_crowd_keeps_its_ids_and_both_iou_paths_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    from edged.tracking import tracker

    s = scene({"min_hits": 1})
    crowd = [[person_at(40 + 55 * k + 3 * i, 200 + 20 * (k % 3)) for k in range(11)] for i in range(15)]
    ups = run(s, crowd)  # 11 tracks x 11 detections: past NUMPY_PAIRS
    assert 11 * 11 > tracker.NUMPY_PAIRS
    assert all(ids(u) == list(range(1, 12)) for u in ups)
    boxes = [(o.box.xmin, o.box.ymin, o.box.xmax, o.box.ymax) for o in crowd[0]]
    shifted = [(x0 + 30, y0 + 5, x1 + 30, y1 + 5) for x0, y0, x1, y1 in boxes]  # overlapping two neighbours
    codes = [1 if k == 4 else 0 for k in range(11)]
    with_numpy = tracker.candidates(boxes, codes, shifted, codes, 0.01)
    monkeypatch.setattr(tracker, "NUMPY_PAIRS", 10**6)
    plain = tracker.candidates(boxes, codes, shifted, codes, 0.01)
    assert len(with_numpy) > 11 and [(r, c) for _, r, c in with_numpy] == [(r, c) for _, r, c in plain]
    assert [v for v, _, _ in with_numpy] == pytest.approx([v for v, _, _ in plain])
    assert all(codes[r] == codes[c] for _, r, c in with_numpy)


def test_a_point_on_the_edge_is_inside_a_car_at_the_bottom_of_the_frame_counts() -> None:
    s = scene(
        {"min_hits": 1, "enter_frames": 1}, {"drive": {"coordinates": [[0.1, 0.5], [0.9, 0.5], [0.9, 1.0], [0.1, 1.0]]}}
    )
    u = s.update([obj("car", 200, 380, 300, 480), obj("car", 10, 380, 60, 480)], W, H, 0.0)  # bottoms on y = 480
    assert [o.zones for o in u.objects] == [("drive",), ()]  # x 250 inside, x 35 left of 64
