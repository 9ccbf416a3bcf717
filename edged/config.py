"""The configuration, as pydantic models: the only place defaults live.

A YAML file holds one :class:`Config`. Unknown keys are rejected; errors name the file
and the key (``edged.yaml: streams[0].source.fps: must be > 0``). Relative paths are
resolved against the directory of the file that names them.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from . import demo as _demo  # noqa: F401 - importing the package registers the synthetic source kind
from . import sinks as _sinks  # noqa: F401 - importing the package registers its kinds
from .errors import ConfigError
from .model_config import EdgeTpuConfig, ModelConfig, format_validation_errors
from .registry import SINKS, SOURCES, StrictConfig
from .sinks.log import LogSinkConfig
from .sources import kinds as _sources  # noqa: F401 - importing it registers the source kinds
from .tracking.config import EventsConfig, MaskConfig, ObjectsConfig, Zones, check_scene

# --------------------------------------------------------------------------- sources and sinks
# Each kind of source and sink lives, with its configuration class, in the module of its
# implementation and registers itself (edged.registry); importing the packages registers them.


SourceConfig = SOURCES.union()
SinkConfig = SINKS.union()


# --------------------------------------------------------------------------- stream (the model's section and the
# Edge TPU's: edged.model_config, without the kinds, for the one-shot commands)


STREAM_ID = r"[A-Za-z0-9_.-]{1,64}"  # a stream's id: in metrics, logs, topics and the API's paths (one owner)


class StreamConfig(StrictConfig):
    id: str = Field(pattern=rf"^{STREAM_ID}$", description="stream name, used in metrics, logs and topics")
    source: SourceConfig
    model: ModelConfig = Field(description="the model section, or the name of an entry of the top-level models:")
    shared_model: Optional[str] = Field(
        None, description="set when model names an entry of models: streams naming the same entry share one engine"
    )
    sinks: List[SinkConfig] = Field(default_factory=lambda: [LogSinkConfig()])
    detect: bool = Field(True, description="detection on at start (switched off and on by MQTT or Home Assistant)")
    objects: ObjectsConfig = Field(
        default_factory=ObjectsConfig, description="detectors: the labels tracked, their filters, the tracking"
    )
    zones: Zones = Field(default_factory=dict, description="detectors: named areas, each with its occupancy")
    masks: List[MaskConfig] = Field(default_factory=list, description="detectors: areas whose detections are dropped")
    events: EventsConfig = Field(default_factory=EventsConfig, description="detectors: events and their snapshots")

    @model_validator(mode="after")
    def _scene(self) -> StreamConfig:
        check_scene(self.objects, self.zones)
        return self


class LogConfig(StrictConfig):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["human", "json"] = "human"


# the event streams the HTTP listener serves at once, each a thread, beside the threads it keeps for
# health, readiness, metrics and the API (edged.listener): more would be a promise it cannot keep
MAX_EVENT_CLIENTS = 64


class HttpConfig(StrictConfig):
    """The HTTP listener's access rules (the listener itself is ``listen:``)."""

    token: Optional[str] = Field(
        None, min_length=16, description="bearer token the API requires (prefer token_env); at least 16 characters"
    )
    token_env: str = Field(
        "EDGED_API_TOKEN", min_length=1, description="environment variable that holds the token when token is unset"
    )
    open: List[Literal["/healthz", "/readyz", "/metrics"]] = Field(
        default_factory=list, description="paths answered without the token (health checks, a scraper without one)"
    )
    max_event_clients: int = Field(
        8, ge=1, description=f"Server-Sent Events connections at once, at most (up to {MAX_EVENT_CLIENTS})"
    )

    @field_validator("max_event_clients")
    @classmethod
    def _servable(cls, v: int) -> int:
        if v > MAX_EVENT_CLIENTS:
            raise ValueError(
                f"{v} is more than the listener serves: at most {MAX_EVENT_CLIENTS} event clients "
                "(beside the connections it keeps for health checks, metrics and the API)"
            )
        return v


class Config(StrictConfig):
    device: str = Field(default_factory=socket.gethostname, description="this device's name")
    listen: str = Field("127.0.0.1:9110", description="HOST:PORT of the HTTP listener (/metrics, /healthz)")
    http: HttpConfig = Field(default_factory=HttpConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    edgetpu: EdgeTpuConfig = Field(default_factory=EdgeTpuConfig)
    models: Dict[str, ModelConfig] = Field(
        default_factory=dict, description="named models; streams that name the same one share one engine, in turn"
    )
    streams: List[StreamConfig] = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _named_models(cls, data: Any) -> Any:
        """``model: NAME`` in a stream becomes that entry of ``models:``, shared."""
        if not isinstance(data, dict) or not isinstance(data.get("streams"), list):
            return data
        models = data.get("models") or {}
        device = data.get("device")
        streams = []
        for i, s in enumerate(data["streams"]):
            if device and isinstance(s, dict) and isinstance(s.get("sinks"), list):
                # an mqtt sink names the device in its topics: the top-level device by default
                sinks = [
                    {**k, "device": device} if isinstance(k, dict) and k.get("type") == "mqtt" and not k.get("device")
                    else k
                    for k in s["sinks"]
                ]  # fmt: skip
                s = {**s, "sinks": sinks}
            if isinstance(s, dict) and isinstance(s.get("model"), str):
                name = s["model"]
                if not isinstance(models, dict) or name not in models:
                    raise ValueError(f"streams[{i}].model: no model named {name!r} under models:")
                s = {**s, "model": models[name], "shared_model": name}
            streams.append(s)
        return {**data, "streams": streams}

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        parse_listen(v)
        return v

    @model_validator(mode="after")
    def _unique_ids(self) -> Config:
        seen: set[str] = set()
        for s in self.streams:
            if s.id in seen:
                raise ValueError(f"stream id {s.id!r} is used twice")
            seen.add(s.id)
        return self


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"listen must be HOST:PORT, not {value!r}")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)


# --------------------------------------------------------------------------- loading


class DuplicateKeyError(yaml.MarkedYAMLError):
    """A mapping names a key twice (YAML says keys are unique; PyYAML would keep the last silently)."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # a << merge key is PyYAML's to resolve
            key = self.construct_object(key_node, deep=True)  # type: ignore[no-untyped-call]
            try:
                first = seen.get(key)
            except TypeError:
                continue  # an unhashable key: PyYAML's own error says it
            if first is not None:
                raise DuplicateKeyError(
                    None, None, f"duplicate key {key!r} (first on line {first.line + 1})", key_node.start_mark
                )
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


def _resolve_paths(raw: dict[str, Any], base: Path) -> None:
    def fix(d: dict[str, Any], key: str) -> None:
        v = d.get(key)
        if isinstance(v, str) and v and not os.path.isabs(os.path.expanduser(v)):
            d[key] = str(base / v)
        elif isinstance(v, str):
            d[key] = os.path.expanduser(v)

    for m in (raw.get("models") or {}).values() if isinstance(raw.get("models"), dict) else []:
        if isinstance(m, dict):
            for k in ("path", "labels", "cpu_model"):
                fix(m, k)
    for s in raw.get("streams") or []:
        if not isinstance(s, dict):
            continue
        for section, keys in (("model", ("path", "labels", "cpu_model")), ("source", ("path",))):
            if isinstance(s.get(section), dict):
                for k in keys:
                    fix(s[section], k)
        for sink in s.get("sinks") or []:
            if isinstance(sink, dict):
                for k in ("path", "ca_file", "queue_path"):
                    fix(sink, k)


def config_from_dict(raw: Any, origin: str = "<config>", base: Path | None = None) -> Config:
    if not isinstance(raw, dict):
        raise ConfigError(f"{origin}: the configuration must be a mapping (key: value), not {type(raw).__name__}")
    if base is not None:
        _resolve_paths(raw, base)
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{origin}: {format_validation_errors(exc)}") from None


def load_config(path: str | Path) -> Config:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {p}") from None
    except IsADirectoryError:
        raise ConfigError(f"config path is a directory, not a file: {p}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {p}: {exc}") from None
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        kind = "YAML error" if isinstance(exc, DuplicateKeyError) else "YAML syntax error"
        raise ConfigError(f"{p}: {where}{kind}: {problem}") from None
    if raw is None:
        raise ConfigError(f"{p}: the file is empty")
    return config_from_dict(raw, str(p), p.parent.resolve())


def builtin_model_dir() -> Path:
    """Where the bundled models live (models/ of the source tree, installed as edged.models)."""
    from importlib import resources

    try:
        return Path(str(resources.files("edged.models")))
    except ModuleNotFoundError:  # running from a source checkout that is not installed
        return Path(__file__).resolve().parent.parent / "models"


def default_config() -> Config:
    """The embedded demo: the bundled digits detector watching the synthetic scene of 1 to 4 digits."""
    models = builtin_model_dir()
    return config_from_dict(
        {
            "streams": [
                {
                    "id": "demo",
                    "source": {"type": "synthetic", "width": 640, "height": 480, "fps": 15, "digits": "many"},
                    "model": {
                        "path": str(models / "digits_detector_int8.tflite"),
                        "labels": str(models / "digits_labels.txt"),
                        "threshold": 0.5,
                    },
                    "sinks": [{"type": "log", "interval": 1.0}],
                }
            ]
        },
        "<embedded default>",
    )


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json", exclude_none=True), sort_keys=False)
