"""Home Assistant's discovery configurations and edged's topics, pure (the broker's side: test_events.py,
Home Assistant's: test_homeassistant.py)."""

from __future__ import annotations

import json
import re

from edged.sinks.base import SceneDescription
from edged.sinks.mqtt.discovery import Discovery, StreamEntities
from edged.sinks.mqtt.topics import DeviceTopics, StreamTopics, slug, stream_of_command

TOPIC_ID = re.compile(r"^[a-zA-Z0-9_-]+$")  # Home Assistant's node_id and object_id


def configs(node: str = "shelf-pi", **summary: object) -> dict:
    topics = DeviceTopics("edged", node)
    streams = [
        StreamEntities("porch", SceneDescription(("person", "traffic light"), {"door": (), "lawn": ("person",)})),
        StreamEntities("yard.cls", None),  # a classifier: no occupancy, no snapshot
    ]
    return Discovery("homeassistant", node, topics).configs(
        {"device": node, "version": "9.9", "hardware": "Raspberry Pi 5 with Coral USB", **summary}, streams
    )


def test_every_entity_is_one_device_with_valid_ids_and_topics() -> None:
    out = configs(url="http://shelf-pi:9110/", edgetpus=[{"name": "pci:0", "temperature": 48.5}])
    for topic, cfg in out.items():
        prefix, component, node, object_id, last = topic.split("/")
        assert (prefix, node, last) == ("homeassistant", "shelf-pi", "config"), topic
        assert TOPIC_ID.match(object_id) and TOPIC_ID.match(cfg["object_id"]), topic
        assert cfg["availability_topic"] == "edged/shelf-pi/availability"
        assert (cfg["payload_available"], cfg["payload_not_available"]) == ("online", "offline")
        assert cfg["device"] == {
            "identifiers": ["edged_shelf-pi"], "name": "edged shelf-pi", "manufacturer": "edged",
            "model": "Raspberry Pi 5 with Coral USB", "sw_version": "9.9", "configuration_url": "http://shelf-pi:9110/",
        }  # fmt: skip
        assert cfg["origin"]["name"] == "edged"
        assert len(json.dumps(cfg)) < 2000
    uids = [c["unique_id"] for c in out.values()]
    assert len(set(uids)) == len(uids)
    binary = {t.split("/")[3]: c for t, c in out.items() if t.startswith("homeassistant/binary_sensor/")}
    problem = binary.pop("edgetpu_problem")  # the board has an Edge TPU: its problem sensor
    assert (problem["device_class"], problem["entity_category"]) == ("problem", "diagnostic")
    assert problem["state_topic"] == problem["json_attributes_topic"] == "edged/shelf-pi/status"
    occupancy = binary
    assert set(occupancy) == {
        "porch_all_occupancy", "porch_person_occupancy", "porch_traffic_light_occupancy",
        "porch_door_all_occupancy", "porch_door_person_occupancy", "porch_door_traffic_light_occupancy",
        "porch_lawn_all_occupancy", "porch_lawn_person_occupancy",  # lawn counts persons only
    }  # fmt: skip
    assert (
        occupancy["porch_door_traffic_light_occupancy"]["state_topic"]
        == "edged/shelf-pi/porch/zones/door/traffic_light/occupancy"
    )
    assert all(c["device_class"] == "occupancy" for c in occupancy.values())
    temp = out["homeassistant/sensor/shelf-pi/edgetpu_pci_0_temperature/config"]
    assert (temp["device_class"], temp["unit_of_measurement"], temp["state_class"]) == (
        "temperature",
        "°C",
        "measurement",
    )
    assert temp["state_topic"] == "edged/shelf-pi/edgetpu/pci_0/temperature"
    # the classifier's stream: frame rate, accelerator, fallbacks and its switch; no image, no occupancy
    cls = sorted(t.split("/", 3)[3] for t in out if "/yard_cls_" in t)
    assert cls == [
        "yard_cls_accelerator/config",
        "yard_cls_detect/config",
        "yard_cls_fallbacks/config",
        "yard_cls_fps/config",
    ]
    assert (
        out["homeassistant/switch/shelf-pi/yard_cls_detect/config"]["command_topic"]
        == "edged/shelf-pi/yard.cls/detect/set"
    )


def test_the_problem_sensor_is_only_for_a_board_with_an_edge_tpu() -> None:
    assert not [t for t in configs() if "edgetpu_problem" in t]
    out = configs(edgetpus=[{"name": "usb:0", "temperature": None}])  # a USB TPU: no thermometer, a problem sensor
    assert [t.split("/")[3] for t in out if "edgetpu" in t] == ["edgetpu_problem"]


def test_no_url_no_configuration_url_and_a_node_id_made_valid() -> None:
    out = configs(node="shelf pi")
    cfg = next(iter(out.values()))
    assert "configuration_url" not in cfg["device"]
    assert all(t.split("/")[2] == "shelf-pi" for t in out), list(out)[:3]


def test_topics() -> None:
    t = StreamTopics("edged/dev/cam")
    assert t.occupancy((None, None)) == "edged/dev/cam/objects/all/occupancy"
    assert t.count((None, "Traffic Light")) == "edged/dev/cam/objects/traffic_light/count"
    assert t.count(("door", None)) == "edged/dev/cam/zones/door/all/count"
    assert StreamTopics.replay(t.result) == "edged/dev/cam/result/replay"
    assert slug("all") == "label_all" and slug("?!") == "x"
    assert stream_of_command("edged/dev/cam/detect/set", "edged/dev") == "cam"
    assert stream_of_command("edged/dev/a/b/detect/set", "edged/dev") is None
    assert stream_of_command("edged/other/cam/detect/set", "edged/dev") is None
