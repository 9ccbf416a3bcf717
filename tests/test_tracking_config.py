"""edged.tracking's configuration: defaults, the YAML of docs/events.md, and its validation errors."""

from __future__ import annotations

from typing import Any, Dict, List

import pytest
import yaml
from pydantic import Field, ValidationError

from edged.model_config import format_validation_errors
from edged.registry import StrictConfig
from edged.tracking import EventsConfig, MaskConfig, ObjectsConfig, ZoneConfig, Zones, check_scene


class Section(StrictConfig):
    """The four fields as a stream configuration carries them."""

    objects: ObjectsConfig = Field(default_factory=ObjectsConfig)
    zones: Zones = Field(default_factory=dict)
    masks: List[MaskConfig] = Field(default_factory=list)
    events: EventsConfig = Field(default_factory=EventsConfig)


DOC = """
objects:
  track: [person, car]
  filters:
    person: {min_score: 0.6, min_area: 0.002, max_area: 0.5}
    "*": {min_score: 0.4}
  max_missed_frames: 5
  min_hits: 2
  stationary_seconds: 10
  enter_frames: 2
  enter_seconds: 0
  leave_seconds: 2
zones:
  driveway:
    coordinates: [[0.1, 0.5], [0.9, 0.5], [0.9, 1.0], [0.1, 1.0]]
    units: auto
    anchor: bottom_center
    labels: [car]
    enter_frames: 3
    leave_seconds: 5
masks:
  - coordinates: [[0, 0], [200, 0], [200, 80], [0, 80]]
events:
  enabled: true
  snapshots: true
  snapshot_max_files: 500
  snapshot_max_megabytes: 200
  snapshot_max_age_hours: 168
  update_interval_seconds: 1.0
"""


def error(data: Dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as info:
        Section.model_validate(data)
    return format_validation_errors(info.value)


def test_the_documented_yaml_loads_with_its_values() -> None:
    s = Section.model_validate(yaml.safe_load(DOC))
    assert s.objects.track == ["person", "car"] and s.objects.filters["person"].max_area == 0.5
    zone = s.zones["driveway"]
    assert zone.fractions() and zone.labels == ["car"]
    d = zone.debounce(s.objects)
    assert (d.enter_frames, d.enter_seconds, d.leave_seconds) == (3, 0.0, 5.0)
    assert not s.masks[0].fractions() and s.events.snapshot_max_files == 500
    check_scene(s.objects, s.zones)


def test_defaults() -> None:
    o = ObjectsConfig()
    assert (o.track, o.max_missed_frames, o.min_hits, o.enter_frames, o.leave_seconds) == (None, 5, 2, 2, 2.0)
    assert EventsConfig().update_interval_seconds == 1.0


@pytest.mark.parametrize(
    ("coordinates", "message"),
    [
        ([[0, 0], [1, 1]], "at least 3 points, not 2"),
        ([[0, 0], [1, 0], [float("nan"), 1]], "not a finite number"),
        ([[0, 0], [10, 0], [10, float("inf")]], "not a finite number"),
        ([[0, 0], [-5, 0], [10, 10]], "negative coordinate"),
        ([[0, 0], [0.5, 0.5], [1, 1]], "no area"),
        ([[0, 0], [1, 0, 3], [1, 1]], "a point is [x, y]"),
    ],
)
def test_bad_polygons_are_refused(coordinates: List[Any], message: str) -> None:
    assert message in error({"zones": {"a": {"coordinates": coordinates}}})
    assert message in error({"masks": [{"coordinates": coordinates}]})


@pytest.mark.parametrize("name", ["drive way", "a/b", "", "x" * 65, "über", "a+b"])
def test_bad_zone_names_are_refused(name: str) -> None:
    msg = error({"zones": {name: {"coordinates": [[0, 0], [1, 0], [1, 1]]}}})
    assert "letters, digits, '_' or '-'" in msg and msg.startswith("zones.")


def test_good_zone_names() -> None:
    triangle = {"coordinates": [[0, 0], [1, 0], [1, 1]]}
    s = Section.model_validate({"zones": {n: triangle for n in ("a", "A_b-9", "x" * 64)}})
    assert len(s.zones) == 3


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"objects": {"filters": {"person": {"min_area": 0.5, "max_area": 0.1}}}}, "min_area (0.5) must be smaller"),
        ({"objects": {"filters": {"person": {"min_area": 500, "max_area": 400}}}}, "must be smaller"),
        ({"objects": {"filters": {"person": {"min_score": 1.5}}}}, "less than or equal to 1"),
        ({"objects": {"min_hits": 0}}, "greater than or equal to 1"),
        ({"objects": {"track": []}}, "an empty list tracks nothing"),
        ({"objects": {"track": ["car", "car"]}}, "listed twice"),
        ({"objects": {"track": ["car"], "filters": {"person": {}}}}, "label 'person' is not tracked"),
        ({"objects": {"leave_seconds": -1}}, "greater than or equal to 0"),
        ({"objects": {"stationary_iou": 1}}, "less than 1"),
        ({"objects": {"colour": "red"}}, "unknown key"),
        ({"zones": {"a": {"coordinates": [[0, 0], [1, 0], [1, 1]], "anchor": "left"}}}, "bottom_center"),
        ({"zones": {"a": {"coordinates": [[0, 0], [1, 0], [1, 1]], "labels": []}}}, "an empty list counts nothing"),
        ({"zones": {"a": {"coordinates": [[0, 0], [3, 0], [3, 3]], "units": "fractions"}}}, "<= 1 (units"),
        ({"events": {"snapshot_max_files": 0}}, "greater than or equal to 1"),
        ({"events": {"update_interval_seconds": -1}}, "greater than or equal to 0"),
    ],
)
def test_bad_values_are_refused_with_a_clear_message(data: Dict[str, Any], message: str) -> None:
    assert message in error(data)


def test_mixed_area_units_compare_only_against_a_frame() -> None:
    f = ObjectsConfig.model_validate({"filters": {"*": {"min_area": 0.5, "max_area": 100}}}).filters["*"]
    assert (f.min_area, f.max_area) == (0.5, 100)


def test_a_zone_label_must_be_tracked() -> None:
    objects = ObjectsConfig(track=["person"])
    zones = {"drive": ZoneConfig.model_validate({"coordinates": [[0, 0], [1, 0], [1, 1]], "labels": ["car"]})}
    with pytest.raises(ValueError, match=r"zones.drive.labels: label 'car' is not tracked \(objects.track: person\)"):
        check_scene(objects, zones)
    check_scene(ObjectsConfig(), zones)  # every label tracked: fine
