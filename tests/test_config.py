from __future__ import annotations

from pathlib import Path

import pytest

from edged.config import Config, config_from_dict, default_config, dump_config, load_config
from edged.errors import ConfigError


def _stream(**over):
    s = {"id": "cam", "source": {"type": "synthetic"}, "model": {"path": "m.tflite"}}
    s.update(over)
    return s


def test_minimal_config_and_defaults() -> None:
    cfg = config_from_dict({"streams": [_stream()]})
    assert cfg.listen == "127.0.0.1:9110"
    s = cfg.streams[0]
    assert s.source.fps == 15 and s.model.resize == "stretch" and s.model.runtime == "auto"
    assert [k.type for k in s.sinks] == ["log"]


def test_relative_paths_resolve_against_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "edged.yaml").write_text(
        "streams:\n  - id: a\n    source: {type: video, path: clips/a.mp4}\n"
        "    model: {path: models/m.tflite, labels: /abs/labels.txt}\n"
        "    sinks: [{type: jsonl, path: out/r.jsonl}]\n"
    )
    cfg = load_config(tmp_path / "edged.yaml")
    s = cfg.streams[0]
    assert s.source.path == str(tmp_path.resolve() / "clips/a.mp4")
    assert s.model.path == str(tmp_path.resolve() / "models/m.tflite")
    assert s.model.labels == "/abs/labels.txt"
    assert s.sinks[0].path == str(tmp_path.resolve() / "out/r.jsonl")


@pytest.mark.parametrize(
    "raw,message",
    [
        ({"streams": [_stream(model={"pth": "x"})]}, r"streams\[0\]\.model\.pth: unknown key"),
        (
            {"streams": [_stream(source={"type": "synthetic", "fps": 0})]},
            r"streams\[0\]\.source\.fps: Input should be greater than 0",
        ),
        ({"streams": [_stream(source={"type": "webcam"})]}, r"streams\[0\]\.source.*webcam"),
        ({"streams": [_stream(), _stream()]}, "stream id 'cam' is used twice"),
        ({"streams": []}, "streams: List should have at least 1 item"),
        ({"listen": "9110", "streams": [_stream()]}, "listen must be HOST:PORT"),
        ({"streams": [_stream(id="bad id!")]}, r"streams\[0\]\.id"),
        ({"streams": [_stream(model={"path": "m", "std": 0})]}, "std must not be 0"),
        ({"bogus": 1, "streams": [_stream()]}, "bogus: unknown key"),
    ],
)
def test_errors_name_the_file_and_the_key(raw: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        config_from_dict(raw, "edged.yaml")
    assert str(info.value).startswith("edged.yaml: ")
    assert "\n" not in str(info.value)


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("streams:\n  - id: a\n    source: {type: synthetic\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: line \d+, column \d+: YAML syntax error"):
        load_config(bad)
    (tmp_path / "empty.yaml").write_text("")
    with pytest.raises(ConfigError, match="empty"):
        load_config(tmp_path / "empty.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(tmp_path / "list.yaml")


@pytest.mark.faults
def test_a_key_given_twice_is_an_error_naming_it_and_its_lines(tmp_path: Path) -> None:
    """Found: a key given twice was accepted silently, the last one winning."""
    f = tmp_path / "dup.yaml"
    f.write_text(
        "streams:\n  - id: a\n    source: {type: synthetic}\n    model:\n      path: m.tflite\n"
        "      threshold: 0.4\n      labels: l.txt\n      threshold: 0.6\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(f)
    assert str(info.value) == f"{f}: line 8, column 7: YAML error: duplicate key 'threshold' (first on line 6)"
    f.write_text("device: a\ndevice: b\nstreams: []\n")
    with pytest.raises(ConfigError, match=r"line 2, column 1: YAML error: duplicate key 'device' \(first on line 1\)"):
        load_config(f)
    # the same key in two different mappings, and YAML merge keys, are fine
    f.write_text(
        "base: &b {type: synthetic, fps: 5}\nstreams:\n  - id: a\n    source: {<<: *b, fps: 2}\n"
        "    model: {path: m.tflite}\n  - id: b\n    source: *b\n    model: {path: m.tflite}\n"
    )
    with pytest.raises(ConfigError, match="base: unknown key"):  # parsed: the schema speaks, not the loader
        load_config(f)


def test_default_config_points_at_bundled_model_and_round_trips(tmp_path: Path) -> None:
    cfg = default_config()
    model = Path(cfg.streams[0].model.path)
    assert model.name == "digits_detector_int8.tflite" and model.is_file()
    assert cfg.streams[0].source.digits == "many"
    assert Path(cfg.streams[0].model.labels).is_file()
    (tmp_path / "d.yaml").write_text(dump_config(cfg))
    again = load_config(tmp_path / "d.yaml")
    assert isinstance(again, Config) and again.streams[0].model.path == str(model)


def test_mqtt_sinks_take_the_top_level_device() -> None:
    sinks = [{"type": "mqtt"}, {"type": "mqtt", "device": "own"}, {"type": "log"}]
    cfg = config_from_dict({"device": "shelf-pi", "streams": [_stream(sinks=sinks)]})
    assert [getattr(k, "device", None) for k in cfg.streams[0].sinks] == ["shelf-pi", "own", None]


def test_the_openapi_description_names_stream_ids_as_the_configuration_does() -> None:
    """The one stream-id rule (config.STREAM_ID) is what the published API description says too."""
    import json
    from pathlib import Path

    from edged.config import STREAM_ID

    spec = (Path(__file__).resolve().parent.parent / "edged/web/openapi.json").read_text()
    patterns = {v for k, v in _walk(json.loads(spec)) if k == "pattern"}
    assert patterns == {f"^{STREAM_ID}$"}


def _walk(node: object):
    if isinstance(node, dict):
        for k, v in node.items():
            yield k, v
            yield from _walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v)
