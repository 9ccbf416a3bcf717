"""Pixels to input tensor: resize, BGR->RGB, normalise and quantise.

For a quantised model the input is ``q = clip(round(((p - mean) / std) / scale) + zero_point)``
for pixel value ``p``; for uint8 pixels that whole affine map is a 256-entry lookup
table, applied with one ``cv2.LUT`` pass (per channel when mean/std are per channel).
When the table is the identity — a uint8 model whose quantisation equals the
normalisation, as in most of the Coral zoo — the pixels are copied as they are.

Without an explicit mean/std the raw pixels are fed (as pycoral does): uint8 models get
``q = p``, int8 models ``q = p - 128`` (the same real value for a [0,255]->[0,1] input
quantisation with scale 1/255, zero point -128), float models ``(p - 127.5) / 127.5``.

The functions here know nothing of threads, sockets or configuration.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

INTERPOLATION = {"linear": cv2.INTER_LINEAR, "nearest": cv2.INTER_NEAREST, "area": cv2.INTER_AREA}
_DTYPE_RANGE = {"uint8": (0, 255), "int8": (-128, 127)}


def quantize(x: np.ndarray | float, scale: float, zero_point: int, dtype: str) -> np.ndarray:
    """``q = clip(round(x / scale) + zero_point)`` in ``dtype`` (uint8 or int8).

    Rounds half away from zero, as TFLite's reference QUANTIZE kernel does (std::round).
    """
    lo, hi = _DTYPE_RANGE[dtype]
    v = np.asarray(x, dtype=np.float64) / scale
    q = np.copysign(np.floor(np.abs(v) + 0.5), v) + zero_point
    return np.clip(q, lo, hi).astype(dtype)


def dequantize(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """``x = scale * (q - zero_point)`` as float32; a float tensor (scale 0) is returned as is."""
    if scale == 0.0:
        return np.asarray(q, dtype=np.float32)
    return (np.asarray(q, dtype=np.float32) - np.float32(zero_point)) * np.float32(scale)


@dataclass(frozen=True)
class Transform:
    """Where the source frame landed in the model input: ``input = source * scale + pad``."""

    src_width: int
    src_height: int
    scale_x: float
    scale_y: float
    pad_x: int
    pad_y: int
    width: int  # size of the resized image inside the input tensor
    height: int

    def to_source(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Map input-tensor pixel coordinates back to source-frame pixels."""
        return (x - self.pad_x) / self.scale_x, (y - self.pad_y) / self.scale_y

    def to_input(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return x * self.scale_x + self.pad_x, y * self.scale_y + self.pad_y


def compute_transform(src_w: int, src_h: int, dst_w: int, dst_h: int, mode: str = "stretch") -> Transform:
    """Stretch to fill the input, or letterbox: keep the aspect ratio and centre with padding."""
    if mode == "stretch":
        return Transform(src_w, src_h, dst_w / src_w, dst_h / src_h, 0, 0, dst_w, dst_h)
    if mode != "letterbox":
        raise ValueError(f"resize mode must be stretch or letterbox, not {mode!r}")
    s = min(dst_w / src_w, dst_h / src_h)
    w = max(1, min(dst_w, round(src_w * s)))
    h = max(1, min(dst_h, round(src_h * s)))
    px, py = (dst_w - w) // 2, (dst_h - h) // 2
    return Transform(src_w, src_h, w / src_w, h / src_h, px, py, w, h)


def _channels(v: float | list[float] | tuple[float, ...], n: int) -> np.ndarray:
    a = np.asarray(v, dtype=np.float64).reshape(-1)
    if a.size == 1:
        return np.repeat(a, n)
    if a.size != n:
        raise ValueError(f"mean/std need 1 or {n} values, got {a.size}")
    return a


def build_lut(
    dtype: str,
    scale: float,
    zero_point: int,
    mean: float | list[float] | None = None,
    std: float | list[float] | None = None,
    channels: int = 3,
) -> np.ndarray:
    """The 256-entry table pixel -> input value, shape (256,) or (1, 256, C) when per channel.

    ``dtype`` is the input tensor's (uint8, int8 or float32); ``scale``/``zero_point`` its
    quantisation (ignored for float32).
    """
    p = np.arange(256, dtype=np.float64)
    if mean is None and std is None:
        if dtype == "uint8":
            return p.astype(np.uint8)
        if dtype == "int8":
            return (p - 128).astype(np.int8)
        mean, std = 127.5, 127.5
    m = _channels(0.0 if mean is None else mean, channels)
    s = _channels(1.0 if std is None else std, channels)
    if np.any(s == 0):
        raise ValueError("std must not be 0")
    real = (p[:, None] - m[None, :]) / s[None, :]  # (256, C)
    if dtype == "float32":
        table = real.astype(np.float32)
    elif dtype in _DTYPE_RANGE:
        table = quantize(real, scale, zero_point, dtype)
    else:
        raise ValueError(f"input dtype {dtype} is not supported")
    if np.all(table == table[:, :1]):
        return np.ascontiguousarray(table[:, 0])
    return table.reshape(1, 256, channels)


def is_identity(lut: np.ndarray) -> bool:
    return lut.dtype == np.uint8 and lut.ndim == 1 and bool(np.array_equal(lut, np.arange(256, dtype=np.uint8)))


class Preprocessor:
    """Turns BGR frames of any size into one model input, reusing its scratch buffers.

    ``__call__(frame, out)`` writes into ``out`` (an [H,W,C] array, typically a view of
    the interpreter's input tensor, so there is no extra copy) and returns the
    :class:`Transform` that maps boxes back to the frame.
    """

    def __init__(
        self,
        height: int,
        width: int,
        channels: int,
        dtype: str,
        scale: float = 0.0,
        zero_point: int = 0,
        resize: str = "stretch",
        mean: float | list[float] | None = None,
        std: float | list[float] | None = None,
        interpolation: str = "linear",
        pad_value: int = 0,
    ) -> None:
        if channels not in (1, 3):
            raise ValueError(f"input must have 1 or 3 channels, not {channels}")
        self.height, self.width, self.channels = height, width, channels
        self.dtype = dtype
        self.resize = resize
        self.interpolation = INTERPOLATION[interpolation]
        self.lut = build_lut(dtype, scale, zero_point, mean, std, channels)
        self.identity = is_identity(self.lut)
        self.pad_value = pad_value
        self._resized = np.empty((height, width, 3), np.uint8)
        self._color = np.empty((height, width, channels), np.uint8) if not self.identity else None
        self._inner: np.ndarray | None = None
        self._transform: Transform | None = None

    def transform_for(self, src_w: int, src_h: int) -> Transform:
        t = self._transform
        if t is None or t.src_width != src_w or t.src_height != src_h:
            t = compute_transform(src_w, src_h, self.width, self.height, self.resize)
            self._transform = t
            if self.resize == "letterbox":
                self._resized[:] = self.pad_value
                self._inner = np.empty((t.height, t.width, 3), np.uint8)
        return t

    def __call__(self, frame: np.ndarray, out: np.ndarray) -> Transform:
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError(f"expected a BGR uint8 frame [H,W,3], got {frame.dtype} {list(frame.shape)}")
        h, w = frame.shape[:2]
        t = self.transform_for(w, h)
        if self.resize == "stretch":
            cv2.resize(frame, (self.width, self.height), dst=self._resized, interpolation=self.interpolation)
        else:
            assert self._inner is not None
            cv2.resize(frame, (t.width, t.height), dst=self._inner, interpolation=self.interpolation)
            self._resized[t.pad_y : t.pad_y + t.height, t.pad_x : t.pad_x + t.width] = self._inner
        code = cv2.COLOR_BGR2RGB if self.channels == 3 else cv2.COLOR_BGR2GRAY
        target = out.reshape(self.height, self.width, self.channels)
        if self.identity:
            cv2.cvtColor(self._resized, code, dst=target if self.channels == 3 else target[..., 0])
        else:
            assert self._color is not None
            color = self._color if self.channels == 3 else self._color[..., 0]
            cv2.cvtColor(self._resized, code, dst=color)
            result = cv2.LUT(color, self.lut, dst=target if self.channels == 3 else target[..., 0])
            if result.ctypes.data != target.ctypes.data:  # OpenCV allocated instead of writing in place
                target.reshape(result.shape)[...] = result
        return t


def preprocess(
    frame: np.ndarray,
    height: int,
    width: int,
    channels: int = 3,
    dtype: str = "uint8",
    scale: float = 0.0,
    zero_point: int = 0,
    **kwargs: object,
) -> tuple[np.ndarray, Transform]:
    """One-shot convenience: returns a new [1,H,W,C] input array and the transform."""
    out = np.empty((1, height, width, channels), dtype=np.dtype(dtype))
    pre = Preprocessor(height, width, channels, dtype, scale, zero_point, **kwargs)  # type: ignore[arg-type]
    return out, pre(frame, out[0])
