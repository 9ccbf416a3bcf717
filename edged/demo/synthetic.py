"""The synthetic source: the demo's digits scene, rendered at a fixed frame rate.

Each frame carries what the scene drew as its ``truth`` annotation (``{"label": "7"}``, or
``{"objects": [...]}`` for ``digits: many``), which results carry on and the log sink
judges (:mod:`edged.demo.truth`).
"""

from __future__ import annotations

from typing import Any, Literal, Mapping, Optional

import numpy as np
from pydantic import Field

from ..registry import SOURCES, StrictConfig
from ..sources.base import Source
from .scene import DigitScene, MultiDigitScene, Scene


class SyntheticSourceConfig(StrictConfig):
    """Handwritten digits drifting over a background: the embedded demo's world."""

    type: Literal["synthetic"] = "synthetic"
    width: int = Field(640, ge=32, le=4096, description="frame width in pixels")
    height: int = Field(480, ge=32, le=4096, description="frame height in pixels")
    fps: float = Field(15.0, gt=0, le=1000, description="frames per second produced")
    seed: int = Field(0, description="seed of the scene; the same seed draws the same frames")
    hold_frames: int = Field(30, ge=1, description="frames each digit stays before the next one")
    digits: Literal["one", "many"] = Field(
        "one",
        description="one: one large digit drifting (for a classifier); many: 1 to 4 digits of different sizes "
        "at still places, changed every hold_frames (for a detector; truth lists each digit's box)",
    )


class SyntheticSource(Source):
    kind = "synthetic"

    def __init__(self, cfg: SyntheticSourceConfig, name: str = "") -> None:
        super().__init__(name)
        self.cfg = cfg
        self.scene: Optional[Scene[Any]] = None

    def open(self) -> None:
        c = self.cfg
        kind: type[Scene[Any]] = MultiDigitScene if c.digits == "many" else DigitScene
        self.scene = kind(width=c.width, height=c.height, seed=c.seed, hold_frames=c.hold_frames)

    def describe(self) -> str:
        c = self.cfg
        many = " (1 to 4 a frame)" if c.digits == "many" else ""
        return f"synthetic digits{many} {c.width}x{c.height} at {c.fps:g} fps"

    def _fps(self) -> float | None:
        return self.cfg.fps

    def _grab(self) -> tuple[np.ndarray, str | None, Mapping[str, Any] | None]:
        assert self.scene is not None, "open() first"
        image, drawn = self.scene.render(self._seq)
        return image, None, {"truth": self.scene.annotation(drawn)}


SOURCES.register("synthetic", SyntheticSourceConfig, SyntheticSource)
