"""The synthetic source: the demo's digits scene, rendered at a fixed frame rate."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..scene import DigitScene, MultiDigitScene
from .base import Source


class SyntheticSource(Source):
    kind = "synthetic"

    def __init__(self, cfg: Any, name: str = "") -> None:
        super().__init__(name)
        self.cfg = cfg
        self.scene: DigitScene | None = None

    def open(self) -> None:
        c = self.cfg
        kind = MultiDigitScene if getattr(c, "digits", "one") == "many" else DigitScene
        self.scene = kind(width=c.width, height=c.height, seed=c.seed, hold_frames=c.hold_frames)

    def describe(self) -> str:
        c = self.cfg
        many = " (1 to 4 a frame)" if getattr(c, "digits", "one") == "many" else ""
        return f"synthetic digits{many} {c.width}x{c.height} at {c.fps:g} fps"

    def _fps(self) -> float | None:
        return self.cfg.fps

    def _grab(self) -> tuple[np.ndarray, str | None, Any]:
        assert self.scene is not None, "open() first"
        image, drawn = self.scene.render(self._seq)
        if isinstance(self.scene, MultiDigitScene):
            return image, None, {"objects": drawn}
        return image, None, {"label": str(drawn)}
