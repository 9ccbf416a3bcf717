"""Quantisation maths against the formula, the lookup tables, letterbox round trips."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from edged.preprocess import (
    Preprocessor,
    build_lut,
    compute_transform,
    dequantize,
    is_identity,
    preprocess,
    quantize,
)

PIXELS = np.arange(256, dtype=np.float64)


def formula(real: np.ndarray, scale: float, zp: int, lo: int, hi: int) -> np.ndarray:
    """q = clip(round(real / scale) + zp), rounding half away from zero like TFLite's std::round."""
    out = []
    for r in np.asarray(real, dtype=np.float64).reshape(-1):
        v = float(r) / scale
        q = int(math.copysign(math.floor(abs(v) + 0.5), v)) + zp
        out.append(min(hi, max(lo, q)))
    return np.array(out)


@pytest.mark.parametrize(
    "dtype,scale,zp,lo,hi",
    [
        ("uint8", 0.0078125, 128, 0, 255),
        ("uint8", 0.00784314, 127, 0, 255),  # the TF2 PTQ model's input
        ("uint8", 1 / 255, 0, 0, 255),
        ("int8", 1 / 255, -128, -128, 127),
        ("int8", 0.0078125, 0, -128, 127),
        ("int8", 0.02, 5, -128, 127),
    ],
)
def test_quantize_matches_formula(dtype: str, scale: float, zp: int, lo: int, hi: int) -> None:
    real = np.concatenate([np.linspace(-3, 3, 997), scale * np.array([-2.5, -0.5, 0.5, 1.5, 2.5])])  # ties
    q = quantize(real, scale, zp, dtype)
    assert q.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(q.astype(int), formula(real, scale, zp, lo, hi))
    # dequantise(quantise(x)) is within half a step for values inside the representable range
    inside = (real >= scale * (lo - zp)) & (real <= scale * (hi - zp))
    back = dequantize(q, scale, zp)
    assert np.max(np.abs(back[inside] - real[inside])) <= scale / 2 + 1e-6


def test_dequantize_formula_and_float_passthrough() -> None:
    q = np.array([0, 127, 128, 255], dtype=np.uint8)
    np.testing.assert_allclose(dequantize(q, 0.0078125, 128), [(v - 128) * 0.0078125 for v in (0, 127, 128, 255)])
    qi = np.array([-128, -1, 0, 127], dtype=np.int8)
    np.testing.assert_allclose(dequantize(qi, 0.5, -3), [0.5 * (v + 3) for v in (-128, -1, 0, 127)])
    f = np.array([0.25, 0.5], dtype=np.float32)
    np.testing.assert_array_equal(dequantize(f, 0.0, 0), f)


@pytest.mark.parametrize("dtype,scale,zp", [("uint8", 0.00784314, 127), ("int8", 0.0078125, -1), ("uint8", 0.02, 3)])
@pytest.mark.parametrize("mean,std", [(127.5, 127.5), (128.0, 128.0), ([123.7, 116.3, 103.5], [58.4, 57.1, 57.4])])
def test_lut_equals_formula_for_every_pixel(dtype: str, scale: float, zp: int, mean, std) -> None:
    lut = build_lut(dtype, scale, zp, mean, std, channels=3)
    m = np.broadcast_to(np.asarray(mean, dtype=np.float64), (3,))
    s = np.broadcast_to(np.asarray(std, dtype=np.float64), (3,))
    lo, hi = (0, 255) if dtype == "uint8" else (-128, 127)
    table = lut.reshape(256, -1)
    for c in range(3):
        expected = formula((PIXELS - m[c]) / s[c], scale, zp, lo, hi)
        np.testing.assert_array_equal(table[:, c if table.shape[1] == 3 else 0].astype(int), expected)


def test_identity_lut_for_coral_models() -> None:
    # mobilenet (scale 1/128, zp 128) with pycoral's mean=std=128 is the identity: pixels copied as they are
    assert is_identity(build_lut("uint8", 0.0078125, 128, 128.0, 128.0))
    # raw pixels (no mean/std) into uint8 is the identity whatever the quantisation
    assert is_identity(build_lut("uint8", 0.00784314, 127))
    # int8 raw: p - 128
    np.testing.assert_array_equal(build_lut("int8", 1 / 255, -128).astype(int), np.arange(256) - 128)
    assert not is_identity(build_lut("uint8", 0.00784314, 127, 127.5, 127.5))


def test_float_input_normalisation() -> None:
    frame = np.full((10, 10, 3), 255, np.uint8)
    frame[..., 0] = 0  # blue 0 -> RGB order puts it last
    x, _ = preprocess(frame, 4, 4, 3, "float32", mean=127.5, std=127.5)
    assert x.dtype == np.float32
    np.testing.assert_allclose(x[0, 0, 0], [1.0, 1.0, -1.0])


def test_bgr_to_rgb_and_lut_applied_per_channel() -> None:
    frame = np.zeros((8, 8, 3), np.uint8)
    frame[...] = (10, 20, 30)  # B, G, R
    x, _ = preprocess(frame, 8, 8, 3, "uint8")
    np.testing.assert_array_equal(x[0, 0, 0], [30, 20, 10])
    x, _ = preprocess(frame, 8, 8, 3, "int8", 0.0078125, 0, mean=[30, 20, 10], std=1.0)  # per channel, real 0
    np.testing.assert_array_equal(x[0, 3, 3], [0, 0, 0])


def test_preprocessor_writes_into_given_buffer_without_copy() -> None:
    frame = np.random.default_rng(0).integers(0, 255, (720, 1280, 3), dtype=np.uint8)
    tensor = np.zeros((1, 300, 300, 3), np.uint8)
    pre = Preprocessor(300, 300, 3, "uint8", 0.0078125, 128)
    before = tensor.ctypes.data
    pre(frame, tensor[0])
    assert tensor.ctypes.data == before
    expected = cv2.cvtColor(cv2.resize(frame, (300, 300), interpolation=cv2.INTER_LINEAR), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(tensor[0], expected)
    # non-identity path (int8 LUT) also lands in the given buffer
    t8 = np.zeros((1, 300, 300, 3), np.int8)
    Preprocessor(300, 300, 3, "int8", 1 / 255, -128)(frame, t8[0])
    np.testing.assert_array_equal(t8[0].astype(int), expected.astype(int) - 128)


def test_grayscale_input() -> None:
    frame = np.full((20, 30, 3), (0, 255, 0), np.uint8)
    x, _ = preprocess(frame, 8, 8, 1, "uint8")
    assert x.shape == (1, 8, 8, 1)
    assert x[0, 4, 4, 0] == cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)[0, 0]


@pytest.mark.parametrize("src", [(1280, 720), (600, 512), (300, 300), (200, 900), (1352, 900)])
def test_letterbox_round_trip(src: tuple[int, int]) -> None:
    w, h = src
    t = compute_transform(w, h, 300, 300, "letterbox")
    assert abs(t.scale_x - t.scale_y) < 0.01  # aspect ratio kept
    assert t.pad_x >= 0 and t.pad_y >= 0 and t.pad_x + t.width <= 300 and t.pad_y + t.height <= 300
    assert t.width == 300 or t.height == 300  # fills one side
    pts = np.array([0.0, w / 3, w]), np.array([0.0, h / 2, h])
    back = t.to_source(*t.to_input(*pts))
    np.testing.assert_allclose(back[0], pts[0], atol=1e-6)
    np.testing.assert_allclose(back[1], pts[1], atol=1e-6)
    # the source corners land on the edges of the content area
    x1, y1 = t.to_input(np.array([w]), np.array([h]))
    assert abs(x1[0] - (t.pad_x + t.width)) < 1e-6 and abs(y1[0] - (t.pad_y + t.height)) < 1e-6


def test_letterbox_pixels_land_in_the_content_area() -> None:
    frame = np.full((720, 1280, 3), 200, np.uint8)
    x, t = preprocess(frame, 300, 300, 3, "uint8", resize="letterbox")
    assert (t.pad_x, t.pad_y, t.width, t.height) == (0, 65, 300, 169)
    assert np.all(x[0, : t.pad_y] == 0) and np.all(x[0, t.pad_y + t.height :] == 0)
    assert np.all(x[0, t.pad_y : t.pad_y + t.height] == 200)


def test_stretch_transform_maps_corners() -> None:
    t = compute_transform(640, 480, 32, 32, "stretch")
    x, y = t.to_source(np.array([32.0]), np.array([32.0]))
    assert (x[0], y[0]) == (640.0, 480.0)
    with pytest.raises(ValueError):
        compute_transform(640, 480, 32, 32, "crop")
