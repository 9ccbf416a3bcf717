"""The synthetic source: the demo's digits scene, rendered at a fixed frame rate."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..scene import DigitScene
from .base import Source


class SyntheticSource(Source):
    kind = "synthetic"

    def __init__(self, cfg: Any, name: str = "") -> None:
        super().__init__(name)
        self.cfg = cfg
        self.scene: DigitScene | None = None

    def open(self) -> None:
        c = self.cfg
        self.scene = DigitScene(width=c.width, height=c.height, seed=c.seed, hold_frames=c.hold_frames)

    def describe(self) -> str:
        c = self.cfg
        return f"synthetic digits {c.width}x{c.height} at {c.fps:g} fps"

    def _fps(self) -> float | None:
        return self.cfg.fps

    def _grab(self) -> tuple[np.ndarray, str | None, Any]:
        assert self.scene is not None, "open() first"
        image, label = self.scene.render(self._seq)
        return image, None, {"label": str(label)}
