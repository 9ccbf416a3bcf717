"""The mqtt sink's configuration, registered as the sink kind ``mqtt``."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, field_validator

from ...registry import SINKS, StrictConfig
from ..base import Sink, SinkContext
from ..thin import MqttThinConfig


class MqttSinkConfig(StrictConfig):
    """Publish every result to an MQTT broker; QoS 1 results wait in an on-disk queue while it is away."""

    type: Literal["mqtt"] = "mqtt"
    host: str = Field("127.0.0.1", min_length=1, description="broker host name or address")
    port: int = Field(1883, ge=1, le=65535, description="broker port (8883 is the usual TLS port)")
    client_id: Optional[str] = Field(
        None, min_length=1, description="MQTT client id (default: edged-<device>, shared by the sinks of one broker)"
    )
    username: Optional[str] = Field(None, description="user name for the broker")
    password: Optional[str] = Field(None, description="password (prefer password_env)")
    password_env: Optional[str] = Field(None, description="name of an environment variable holding the password")
    tls: bool = Field(False, description="connect with TLS")
    ca_file: Optional[str] = Field(None, description="CA certificates to verify the broker (default: the system's)")
    qos: Literal[0, 1] = Field(
        1, description="1: at least once, queued on disk while the broker is away; 0: at most once, never queued"
    )
    topic_prefix: str = Field("edged", min_length=1, description="results go to <prefix>/<device>/<stream>/result")
    device: Optional[str] = Field(
        None, description="device name in the topics (default: the top-level device:, else the host name)"
    )
    queue_path: Optional[str] = Field(
        None, description="SQLite queue file (default: $STATE_DIRECTORY or ~/.local/state/edged, <stream>.mqtt.sqlite)"
    )
    queue_max: int = Field(10000, ge=1, description="results kept while the broker is away; then the oldest go")
    status_interval: float = Field(
        30.0, ge=1, le=3600, description="seconds between two publications of the retained device status"
    )
    thin: Optional[MqttThinConfig] = Field(None, description="publish fewer results (default: every result)")
    discovery: bool = Field(True, description="Home Assistant MQTT discovery: the device and its entities")
    discovery_prefix: str = Field(
        "homeassistant", min_length=1, description="Home Assistant's discovery prefix (its MQTT integration's setting)"
    )

    @field_validator("topic_prefix", "device", "discovery_prefix")
    @classmethod
    def _topic_level(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and any(c in v for c in "+#\0"):
            raise ValueError("must not contain +, # or NUL")
        return v


def _make(cfg: MqttSinkConfig, ctx: SinkContext) -> Sink:
    from .sink import MqttSink

    return MqttSink(cfg, ctx)


SINKS.register("mqtt", MqttSinkConfig, _make)
