"""Thinning rules (edged.sinks.thin.Thinner): pure logic, driven with made-up results and times."""

from __future__ import annotations

import pytest

from edged.config import config_from_dict
from edged.errors import ConfigError
from edged.result import Box, Class, Object, Result
from edged.sinks.thin import Thinner


def cls(*labels: str, scores: tuple[float, ...] = ()) -> Result:
    scores = scores or tuple(0.9 for _ in labels)
    classes = [Class(i, label, s) for i, (label, s) in enumerate(zip(labels, scores))]
    return Result("s", 0, 0.0, "m", "cpu", "classification", 10, 10, classes=classes)


def det(*labels: str, scores: tuple[float, ...] = ()) -> Result:
    scores = scores or tuple(0.9 for _ in labels)
    objects = [Object(0, label, s, Box(0, 0, 1, 1)) for label, s in zip(labels, scores)]
    return Result("s", 0, 0.0, "m", "cpu", "detection", 10, 10, objects=objects)


def run(thinner: Thinner, timeline: list[tuple[float, Result]]) -> list[float]:
    """The times of the results admitted."""
    return [t for t, r in timeline if thinner.admit(r, t)]


def test_needs_a_rule() -> None:
    with pytest.raises(ValueError):
        Thinner()
    with pytest.raises(ValueError):
        Thinner(max_per_second=0)


def test_on_change_classification_compares_the_set_of_labels() -> None:
    t = Thinner(on_change=True)
    timeline = [
        (0.0, cls("cat")),  # first: published
        (0.1, cls("cat")),
        (0.2, cls("cat", "dog")),  # a label more
        (0.3, cls("dog", "cat")),  # the same set, another order
        (0.4, cls("dog")),  # a label less
        (0.5, cls()),  # nothing
        (0.6, cls()),
        (0.7, cls("dog")),
    ]
    assert run(t, timeline) == [0.0, 0.2, 0.4, 0.5, 0.7]
    assert (t.passed, t.thinned) == (5, 3)


def test_on_change_detection_compares_labels_with_their_counts() -> None:
    t = Thinner(on_change=True)
    timeline = [
        (0.0, det("person", "car")),
        (0.1, det("car", "person")),  # the same: order and boxes do not count
        (0.2, det("person", "person", "car")),  # one person more
        (0.3, det("person", "car", "person")),
        (0.4, det("person", "car")),  # one less again
    ]
    assert run(t, timeline) == [0.0, 0.2, 0.4]


def test_min_score_ignores_weak_labels() -> None:
    t = Thinner(on_change=True, min_score=0.5)
    timeline = [
        (0.0, cls("cat", "dog", scores=(0.9, 0.2))),
        (0.1, cls("cat", "fox", scores=(0.9, 0.3))),  # flicker below min_score: no change
        (0.2, cls("cat", "fox", scores=(0.8, 0.6))),  # fox counts now
    ]
    assert run(t, timeline) == [0.0, 0.2]


def test_max_per_second_per_label() -> None:
    t = Thinner(max_per_second=2)  # each label at most every 0.5 s
    frames = [(i / 20, cls("cat")) for i in range(40)]  # 20 fps for 2 s
    assert run(t, frames) == [0.0, 0.5, 1.0, 1.5]


def test_max_per_second_never_exceeded_for_any_label() -> None:
    t = Thinner(max_per_second=4)
    scenes = [cls("cat"), cls("cat", "dog"), cls("dog"), cls(), cls("fox", "cat")]
    timeline = [(i / 30, scenes[(i // 7) % len(scenes)]) for i in range(300)]  # 30 fps, 10 s
    published = [(t_, r) for t_, r in timeline if t.admit(r, t_)]
    last: dict[str, float] = {}
    for when, r in published:
        for label in [c.label for c in r.classes] or [""]:
            assert when - last.get(label, -1e9) >= 0.25 - 1e-9, (label, when, last[label])
            last[label] = when
    assert len(published) >= 30  # and it does publish: about 4 a second
    assert t.thinned == 300 - len(published)


def test_a_new_label_waits_for_the_others_in_its_result() -> None:
    t = Thinner(max_per_second=1)
    timeline = [
        (0.0, cls("cat")),
        (0.3, cls("cat", "dog")),  # dog is new, cat is not due: held back
        (0.6, cls("dog")),  # dog alone: due at once
        (1.0, cls("cat", "dog")),  # cat due, dog not (0.6)
        (1.6, cls("cat", "dog")),  # both due
    ]
    assert run(t, timeline) == [0.0, 0.6, 1.6]


def test_nothing_is_a_label_for_the_rate() -> None:
    t = Thinner(max_per_second=1)
    timeline = [(0.0, cls()), (0.5, cls()), (0.7, cls("cat")), (1.0, cls()), (1.2, cls("cat"))]
    assert run(t, timeline) == [0.0, 0.7, 1.0]


def test_both_rules() -> None:
    t = Thinner(on_change=True, max_per_second=1)
    timeline = [
        (0.0, cls("cat")),
        (0.2, cls("dog")),  # a change, but... dog never published: due; published
        (0.4, cls("cat")),  # a change, cat not due (0.0): held back
        (0.8, cls("cat")),  # still a change from the last published (dog), cat still not due
        (1.1, cls("cat")),  # due now: published
        (2.5, cls("cat")),  # due, but no change
    ]
    assert run(t, timeline) == [0.0, 0.2, 1.1]


def test_heartbeat_publishes_a_static_scene() -> None:
    t = Thinner(on_change=True, heartbeat_seconds=5)
    frames = [(i / 10, cls("cat")) for i in range(161)]  # 10 fps for 16 s, the same scene
    assert run(t, frames) == [0.0, 5.0, 10.0, 15.0]
    t = Thinner(on_change=True, heartbeat_seconds=0)  # never
    assert run(t, frames) == [0.0]


def test_heartbeat_counts_from_the_last_published() -> None:
    t = Thinner(on_change=True, heartbeat_seconds=5)
    timeline = [(0.0, cls("cat")), (3.0, cls("dog")), (7.0, cls("dog")), (8.0, cls("dog")), (8.5, cls("dog"))]
    assert run(t, timeline) == [0.0, 3.0, 8.0]


@pytest.mark.parametrize(
    "thin,message",
    [
        ({}, r"streams\[0\]\.sinks\[0\]\.thin: set on_change: true and/or max_per_second"),
        ({"on_change": False}, r"thin: set on_change"),
        ({"max_per_second": 0}, r"thin\.max_per_second: Input should be greater than 0"),
        ({"on_change": True, "heartbeat_seconds": -1}, r"thin\.heartbeat_seconds: Input should be greater"),
        ({"on_change": True, "min_score": 2}, r"thin\.min_score: Input should be less than or equal to 1"),
        ({"on_change": True, "every": 3}, r"thin\.every: unknown key"),
    ],
)
def test_thin_config_errors_are_one_line(thin: dict, message: str) -> None:
    stream = {"id": "cam", "source": {"type": "synthetic"}, "model": {"path": "m.tflite"}}
    stream["sinks"] = [{"type": "mqtt", "thin": thin}]
    with pytest.raises(ConfigError, match=message) as info:
        config_from_dict({"streams": [stream]}, "edged.yaml")
    assert "\n" not in str(info.value)


def test_thin_config_defaults() -> None:
    stream = {"id": "cam", "source": {"type": "synthetic"}, "model": {"path": "m.tflite"}}
    stream["sinks"] = [{"type": "mqtt", "thin": {"on_change": True}}, {"type": "mqtt"}]
    sinks = config_from_dict({"streams": [stream]}).streams[0].sinks
    assert sinks[0].thin.heartbeat_seconds == 60 and sinks[0].thin.max_per_second is None
    assert sinks[1].thin is None and sinks[1].status_interval == 30
    t = Thinner.from_config(sinks[0].thin)
    assert t.on_change and t.heartbeat == 60 and t.interval is None
