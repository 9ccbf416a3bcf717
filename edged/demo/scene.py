"""Synthetic camera scene for the default ``edged`` demo.

A pure module (numpy + OpenCV only): it renders 8x8 scikit-learn handwritten
digits, smoothly upscaled and drawn bright on a dark, slowly drifting, noisy
textured background.  The digit drifts across the frame along a Lissajous path
and changes every ``hold_frames`` frames.  Everything is a deterministic
function of ``(seed, index)``, so frames can be rendered in any order.

The default digit set is ``edged/data/digits_heldout.npz``: the held-out split
of scikit-learn's ``load_digits()`` that the demo model never trained on (see
``models/training/train_digits.py``).

Both scenes share :class:`Scene`: ``render(index)`` returns the frame and what it
shows (``truth(index)``), and ``annotation(truth)`` is that truth as the JSON value
the synthetic source attaches to the frame (the ``truth`` key of a result).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Dict, Generic, List, Optional, TypeVar, Union

import cv2
import numpy as np

__all__ = ["load_digits", "Scene", "DigitScene", "MultiDigitScene", "DEFAULT_DIGITS_FILE"]

T = TypeVar("T")  # what a scene's frame shows: its truth
DigitBoxes = List[Dict[str, Any]]  # [{"label": "7", "box": {"xmin", "ymin", "xmax", "ymax"}}, ...]

DEFAULT_DIGITS_FILE = "digits_heldout.npz"

# Digit glyph size as a fraction of the frame height (uniform per segment).
_MIN_SIZE_FRAC = 0.55
_MAX_SIZE_FRAC = 0.85
# Background texture margins (pixels) used for the slow pan and frame noise.
_BG_PAD = 24
_NOISE_PAD = 16
_NOISE_MAX = 14  # per-frame additive noise amplitude (0.._NOISE_MAX)
_CACHE_SEGMENTS = 8
_MASK64 = (1 << 64) - 1


def _default_digits_path() -> Path:
    try:
        from importlib import resources

        p = resources.files("edged.data") / DEFAULT_DIGITS_FILE
        if p.is_file():
            return Path(str(p))
    except Exception:  # not imported as a package / no resources support
        pass
    return Path(__file__).resolve().parent.parent / "data" / DEFAULT_DIGITS_FILE


def load_digits(path: Union[str, Path, None] = None) -> tuple[np.ndarray, np.ndarray]:
    """Load a digits file (``images`` uint8 [N,8,8] 0..16, ``labels`` int64 [N]).

    ``path`` defaults to the bundled held-out split ``edged/data/digits_heldout.npz``.
    """
    p = Path(path) if path is not None else _default_digits_path()
    with np.load(p, allow_pickle=False) as z:
        images = np.asarray(z["images"])
        labels = np.asarray(z["labels"])
    images, labels = _check_digits(images, labels)
    return images, labels


def _check_digits(images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.ndim == 2 and images.shape[1] == 64:
        images = images.reshape(-1, 8, 8)
    if images.ndim != 3 or images.shape[1:] != (8, 8):
        raise ValueError(f"digit images must be [N,8,8], got {images.shape}")
    if labels.shape != (images.shape[0],):
        raise ValueError(f"labels must be [N] matching images, got {labels.shape}")
    if images.shape[0] == 0:
        raise ValueError("empty digit set")
    images = np.clip(np.rint(images), 0, 16).astype(np.uint8)
    labels = labels.astype(np.int64)
    return np.ascontiguousarray(images), np.ascontiguousarray(labels)


def _rng(*keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([k & _MASK64 for k in keys]))


class _Segment:
    __slots__ = ("image_index", "label", "size", "glyph")

    def __init__(self, image_index: int, label: int, size: int, glyph: np.ndarray) -> None:
        self.image_index = image_index
        self.label = label
        self.size = size
        self.glyph = glyph


class Scene(ABC, Generic[T]):
    """What both scenes share: the drifting background, the digit set, the digit glyphs.

    A subclass places the digits and says what frame ``index`` shows (``truth``, of type
    ``T``), which ``render`` returns with the frame and ``annotation`` turns into the JSON
    value of the frame's ``truth`` annotation.
    """

    def __init__(
        self,
        width: int = 640,
        height: int = 480,
        seed: int = 0,
        hold_frames: int = 30,
        images: Optional[np.ndarray] = None,
        labels: Optional[np.ndarray] = None,
    ) -> None:
        width, height, hold_frames = int(width), int(height), int(hold_frames)
        if width < 16 or height < 16:
            raise ValueError("scene must be at least 16x16")
        if hold_frames < 1:
            raise ValueError("hold_frames must be >= 1")
        if images is None:
            if labels is not None:
                raise ValueError("labels given without images")
            images, labels = load_digits()
        elif labels is None:
            raise ValueError("images given without labels")
        self.images, self.labels = _check_digits(images, labels)
        self.width = width
        self.height = height
        self.seed = int(seed)
        self.hold_frames = hold_frames
        self._n_distinct = len(np.unique(self.labels))

        # Glyph size range in pixels (square), must fit inside the frame.
        side = min(width, height)
        self._smin = max(8, min(int(round(_MIN_SIZE_FRAC * height)), side))
        self._smax = max(self._smin, min(int(round(_MAX_SIZE_FRAC * height)), side))

        rng = _rng(self.seed, 0xB6)
        self._bg = self._make_background(rng)
        self._noise = rng.integers(
            0,
            _NOISE_MAX + 1,
            size=(height + 2 * _NOISE_PAD, width + 2 * _NOISE_PAD, 3),
            dtype=np.uint8,
        )
        # Smooth motion parameters (periods in frames, phases in radians).
        self._bg_period = rng.uniform(400.0, 900.0, size=2)
        self._bg_phase = rng.uniform(0.0, 2 * math.pi, size=2)
        self._mv_period = rng.uniform(110.0, 260.0, size=2)
        self._mv_phase = rng.uniform(0.0, 2 * math.pi, size=2)
        self._segments: dict[int, _Segment] = {}
        self._truth_cache: dict[int, int] = {}

    # ------------------------------------------------------------------ setup
    def _make_background(self, rng: np.random.Generator) -> np.ndarray:
        h, w = self.height + 2 * _BG_PAD, self.width + 2 * _BG_PAD
        # Low-frequency colour blobs.
        low = rng.normal(0.0, 1.0, size=(max(2, h // 48), max(2, w // 48), 3)).astype(np.float32)
        blobs = cv2.resize(low, (w, h), interpolation=cv2.INTER_CUBIC)
        # Diagonal gradient.
        yy = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None]
        xx = np.linspace(0.0, 1.0, w, dtype=np.float32)[None, :]
        ang = rng.uniform(0, 2 * math.pi)
        grad = (math.cos(ang) * xx + math.sin(ang) * yy)[..., None]
        # Fine texture (slightly blurred grain).
        grain = rng.normal(0.0, 1.0, size=(h, w, 3)).astype(np.float32)
        grain = cv2.GaussianBlur(grain, (0, 0), 1.2)
        tint = rng.uniform(18.0, 45.0, size=3).astype(np.float32)
        bg = tint + 14.0 * blobs + 30.0 * grad * rng.uniform(0.5, 1.0, size=3).astype(np.float32) + 9.0 * grain
        return np.clip(bg, 0, 105).astype(np.uint8)

    # --------------------------------------------------------------- segments
    def _raw_choice(self, segment: int) -> int:
        return int(_rng(self.seed, segment, 0xD1).integers(len(self.labels)))

    def _choice(self, segment: int) -> int:
        """Image index for a segment; neighbouring segments show different labels."""
        j = self._raw_choice(segment)
        if segment % 2 == 0 or self._n_distinct < 3:
            return j
        avoid = {int(self.labels[self._raw_choice(segment - 1)]), int(self.labels[self._raw_choice(segment + 1)])}
        rng = _rng(self.seed, segment, 0xD2)
        for _ in range(64):
            if int(self.labels[j]) not in avoid:
                break
            j = int(rng.integers(len(self.labels)))
        return j

    def _segment(self, segment: int) -> _Segment:
        seg = self._segments.get(segment)
        if seg is not None:
            return seg
        j = self._choice(segment)
        rng = _rng(self.seed, segment, 0x5E)
        size = int(rng.integers(self._smin, self._smax + 1))
        # Bright, slightly coloured ink (BGR).
        colour = rng.uniform(185.0, 255.0, size=3).astype(np.float32)
        colour[int(rng.integers(3))] = 255.0
        # Colourise at 8x8, then upscale smoothly (uint8 resize saturates the
        # cubic overshoot): ~0.1 ms even for the largest glyph.
        small = np.clip(self.images[j].astype(np.float32)[..., None] * (1.15 / 16.0), 0.0, 1.0)
        small = np.rint(small * colour).astype(np.uint8)
        glyph = cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC)
        seg = _Segment(j, int(self.labels[j]), size, glyph)
        if len(self._segments) >= _CACHE_SEGMENTS:
            self._segments.pop(next(iter(self._segments)))
        self._segments[segment] = seg
        return seg

    # ------------------------------------------------------------------ API
    @abstractmethod
    def truth(self, index: int) -> T:
        """What frame ``index`` shows."""

    @abstractmethod
    def render(self, index: int, out: Optional[np.ndarray] = None) -> tuple[np.ndarray, T]:
        """Render frame ``index`` as BGR uint8 [height,width,3]; returns (frame, truth).

        If ``out`` (a uint8 [height,width,3] array) is given the frame is drawn
        into it and it is returned.
        """

    @abstractmethod
    def annotation(self, truth: T) -> Dict[str, Any]:
        """``truth`` as the JSON value a frame of this scene carries (its ``truth`` annotation)."""

    def _background(self, index: int, out: Optional[np.ndarray]) -> np.ndarray:
        """The background of frame ``index``: slowly panning texture + per-frame grain."""
        h, w = self.height, self.width
        if out is None:
            out = np.empty((h, w, 3), dtype=np.uint8)
        elif out.shape != (h, w, 3) or out.dtype != np.uint8:
            raise ValueError(f"out must be uint8 [{h},{w},3], got {out.dtype} {out.shape}")
        bx = _BG_PAD + int(
            round((_BG_PAD - 1) * math.sin(2 * math.pi * index / self._bg_period[0] + self._bg_phase[0]))
        )
        by = _BG_PAD + int(
            round((_BG_PAD - 1) * math.sin(2 * math.pi * index / self._bg_period[1] + self._bg_phase[1]))
        )
        hsh = (index * 0x9E3779B1 + self.seed * 0x85EBCA77) & 0xFFFFFFFF
        nx = hsh % (2 * _NOISE_PAD)
        ny = (hsh >> 12) % (2 * _NOISE_PAD)
        bg = self._bg[by : by + h, bx : bx + w]
        nz = self._noise[ny : ny + h, nx : nx + w]
        if out.flags.c_contiguous:
            cv2.add(bg, nz, dst=out)
        else:
            out[...] = cv2.add(bg, nz)
        return out


class DigitScene(Scene[int]):
    """Deterministic synthetic scene: one large handwritten digit on a dark background."""

    def truth(self, index: int) -> int:
        """True digit label shown at frame ``index``."""
        segment = int(index) // self.hold_frames
        seg = self._segments.get(segment)
        if seg is not None:
            return seg.label
        label = self._truth_cache.get(segment)
        if label is None:
            label = int(self.labels[self._choice(segment)])
            if len(self._truth_cache) >= 64:
                self._truth_cache.pop(next(iter(self._truth_cache)))
            self._truth_cache[segment] = label
        return label

    def render(self, index: int, out: Optional[np.ndarray] = None) -> tuple[np.ndarray, int]:
        """Render frame ``index`` as BGR uint8 [height,width,3]; returns (frame, label).

        If ``out`` (a uint8 [height,width,3] array) is given the frame is drawn
        into it and it is returned.
        """
        index = int(index)
        h, w = self.height, self.width
        out = self._background(index, out)
        seg = self._segment(index // self.hold_frames)

        # Digit: smooth Lissajous drift, kept fully inside the frame.
        s = seg.size
        u = 0.5 + 0.5 * math.sin(2 * math.pi * index / self._mv_period[0] + self._mv_phase[0])
        v = 0.5 + 0.5 * math.sin(2 * math.pi * index / self._mv_period[1] + self._mv_phase[1])
        x = int(round(u * (w - s)))
        y = int(round(v * (h - s)))
        roi = out[y : y + s, x : x + s]
        np.maximum(roi, seg.glyph, out=roi)
        return out, seg.label

    def annotation(self, truth: int) -> Dict[str, Any]:
        """``{"label": "7"}``."""
        return {"label": str(truth)}


# Multi-digit mode: glyph side as a fraction of the frame height, digits per segment.
_MULTI_MIN_FRAC = 0.14
_MULTI_MAX_FRAC = 0.36
_MULTI_MAX_DIGITS = 4
_MULTI_GAP = 4  # pixels kept free between two glyphs


class MultiDigitScene(Scene[DigitBoxes]):
    """Deterministic synthetic scene for detection: 1 to 4 digits of different sizes.

    The digits of a segment (``hold_frames`` frames) sit still at random places, never
    overlapping, over the same drifting background as :class:`DigitScene`. ``render``
    returns the frame and the list of ``{"label", "box"}`` (box in frame pixels, the
    glyph's square: ``xmin``, ``ymin``, ``xmax``, ``ymax``).
    """

    def __init__(self, *args: Any, max_digits: int = _MULTI_MAX_DIGITS, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if max_digits < 1:
            raise ValueError("max_digits must be >= 1")
        self.max_digits = int(max_digits)
        side = min(self.width, self.height)
        self._smin = max(8, min(int(round(_MULTI_MIN_FRAC * self.height)), side))
        self._smax = max(self._smin, min(int(round(_MULTI_MAX_FRAC * self.height)), side))
        self._layouts: dict[int, list[tuple[int, int, _Segment]]] = {}

    def _layout(self, segment: int) -> list[tuple[int, int, _Segment]]:
        lay = self._layouts.get(segment)
        if lay is not None:
            return lay
        rng = _rng(self.seed, segment, 0x3D)
        want = int(rng.integers(1, self.max_digits + 1))
        placed: list[tuple[int, int, _Segment]] = []
        for _k in range(want):
            j = int(rng.integers(len(self.labels)))
            size = int(rng.integers(self._smin, self._smax + 1))
            for _ in range(40):
                x = int(rng.integers(0, self.width - size + 1))
                y = int(rng.integers(0, self.height - size + 1))
                if all(
                    x + size + _MULTI_GAP <= px or px + p.size + _MULTI_GAP <= x
                    or y + size + _MULTI_GAP <= py or py + p.size + _MULTI_GAP <= y
                    for px, py, p in placed
                ):  # fmt: skip
                    break
            else:
                continue  # no free place for this one
            colour = rng.uniform(185.0, 255.0, size=3).astype(np.float32)
            colour[int(rng.integers(3))] = 255.0
            small = np.clip(self.images[j].astype(np.float32)[..., None] * (1.15 / 16.0), 0.0, 1.0)
            small = np.rint(small * colour).astype(np.uint8)
            glyph = cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC)
            placed.append((x, y, _Segment(j, int(self.labels[j]), size, glyph)))
        if len(self._layouts) >= _CACHE_SEGMENTS:
            self._layouts.pop(next(iter(self._layouts)))
        self._layouts[segment] = placed
        return placed

    def truth(self, index: int) -> DigitBoxes:
        """What frame ``index`` shows: ``[{"label": str, "box": {xmin, ymin, xmax, ymax}}, ...]``."""
        return [
            {
                "label": str(seg.label),
                "box": {"xmin": float(x), "ymin": float(y), "xmax": float(x + seg.size), "ymax": float(y + seg.size)},
            }
            for x, y, seg in self._layout(int(index) // self.hold_frames)
        ]

    def render(self, index: int, out: Optional[np.ndarray] = None) -> tuple[np.ndarray, DigitBoxes]:
        """Render frame ``index`` as BGR uint8 [height,width,3]; returns (frame, truth)."""
        index = int(index)
        out = self._background(index, out)
        for x, y, seg in self._layout(index // self.hold_frames):
            roi = out[y : y + seg.size, x : x + seg.size]
            np.maximum(roi, seg.glyph, out=roi)
        return out, self.truth(index)

    def annotation(self, truth: DigitBoxes) -> Dict[str, Any]:
        """``{"objects": [{"label": "7", "box": {...}}, ...]}``."""
        return {"objects": truth}
