"""The kinds of sources and sinks: each registers its configuration class and its factory
next to its implementation, and :mod:`edged.config` builds its unions from here.

A kind is chosen by the ``type`` field of its configuration section; the configuration
class declares that field as ``type: Literal["<tag>"] = "<tag>"``. :data:`SOURCES` holds
the source kinds (factory ``(cfg, name) -> Source``), :data:`SINKS` the sink kinds
(factory ``(cfg, ctx: SinkContext) -> Sink``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Callable, Dict, Generic, Protocol, Tuple, Type, TypeVar, Union

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from .sinks.base import Sink, SinkContext
    from .sources.base import Source

F = TypeVar("F", bound=Callable[..., Any])
# a factory takes its own kind's configuration class (hence Any here)
SourceFactory = Callable[[Any, str], "Source"]
SinkFactory = Callable[[Any, "SinkContext"], "Sink"]


class StrictConfig(BaseModel):
    """The base of every configuration section: unknown keys are errors, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class KindConfig(Protocol):
    """A configuration section of a kind: its ``type`` field names the kind."""

    @property
    def type(self) -> str: ...


@dataclass(frozen=True)
class Kind(Generic[F]):
    """One kind of source or sink: its ``type`` tag, its configuration class, its factory."""

    tag: str
    config: Type[StrictConfig]
    factory: F


class Registry(Generic[F]):
    """The kinds of one family (sources or sinks), in the order they registered."""

    def __init__(self, family: str) -> None:
        self.family = family
        self._kinds: Dict[str, Kind[F]] = {}

    def register(self, tag: str, config_cls: Type[StrictConfig], factory: F) -> None:
        field = config_cls.model_fields.get("type")
        if field is None or field.default != tag:
            raise TypeError(f"{config_cls.__name__} must declare type: Literal[{tag!r}] = {tag!r}")
        known = self._kinds.get(tag)
        if known is not None and known.config is not config_cls:
            raise ValueError(f"{self.family} type {tag!r} is registered twice")
        self._kinds[tag] = Kind(tag, config_cls, factory)

    def get(self, tag: str) -> Kind[F]:
        kind = self._kinds.get(tag)
        if kind is None:
            raise ValueError(f"unknown {self.family} type {tag!r}")
        return kind

    def tags(self) -> Tuple[str, ...]:
        return tuple(self._kinds)

    def union(self) -> Any:
        """The pydantic discriminated union of the registered configuration classes."""
        configs = tuple(k.config for k in self._kinds.values())
        if not configs:
            raise RuntimeError(f"no {self.family} kind is registered")
        return Annotated[Union[configs], Field(discriminator="type")]  # type: ignore[valid-type]


SOURCES: Registry[SourceFactory] = Registry("source")
SINKS: Registry[SinkFactory] = Registry("sink")
