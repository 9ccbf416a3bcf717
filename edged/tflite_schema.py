"""A minimal, dependency-free reader of the TFLite flatbuffer.

It reads just what edged needs before (or without) building an interpreter: the file
identifier, the operator codes (builtin and custom, e.g. ``edgetpu-custom-op``), how
many times each operator is used, and the model description. Every offset is bounds
checked, so a truncated or corrupt file gives a :class:`ValueError`, never a crash.
Field numbers follow tensorflow/lite/schema/schema.fbs.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

FILE_IDENTIFIER = b"TFL3"
BUILTIN_CUSTOM = 32  # BuiltinOperator.CUSTOM


class _Table:
    __slots__ = ("buf", "pos", "vt", "vt_len")

    def __init__(self, buf: bytes, pos: int) -> None:
        self.buf = buf
        self.pos = pos
        self.vt = pos - _i32(buf, pos)
        self.vt_len = _u16(buf, self.vt)

    def _field(self, index: int) -> int:
        slot = 4 + 2 * index
        if slot + 2 > self.vt_len:
            return 0
        return _u16(self.buf, self.vt + slot)

    def scalar(self, index: int, fmt: str, default: int) -> int:
        off = self._field(index)
        if not off:
            return default
        return _unpack(fmt, self.buf, self.pos + off)

    def _target(self, index: int) -> int | None:
        off = self._field(index)
        if not off:
            return None
        at = self.pos + off
        return at + _u32(self.buf, at)

    def string(self, index: int) -> str | None:
        at = self._target(index)
        if at is None:
            return None
        n = _u32(self.buf, at)
        _check(self.buf, at + 4, n)
        return self.buf[at + 4 : at + 4 + n].decode("utf-8", "replace")

    def tables(self, index: int) -> list[_Table]:
        at = self._target(index)
        if at is None:
            return []
        n = _u32(self.buf, at)
        _check(self.buf, at + 4, 4 * n)
        out = []
        for i in range(n):
            elem = at + 4 + 4 * i
            out.append(_Table(self.buf, elem + _u32(self.buf, elem)))
        return out


def _check(buf: bytes, at: int, size: int) -> None:
    if at < 0 or size < 0 or at + size > len(buf):
        raise ValueError(f"offset {at}+{size} is outside the file ({len(buf)} bytes)")


def _unpack(fmt: str, buf: bytes, at: int) -> int:
    _check(buf, at, struct.calcsize(fmt))
    return struct.unpack_from(fmt, buf, at)[0]


def _u16(buf: bytes, at: int) -> int:
    return _unpack("<H", buf, at)


def _u32(buf: bytes, at: int) -> int:
    return _unpack("<I", buf, at)


def _i32(buf: bytes, at: int) -> int:
    return _unpack("<i", buf, at)


@dataclass(frozen=True)
class OperatorCode:
    builtin_code: int
    custom_code: str | None

    @property
    def is_custom(self) -> bool:
        return self.builtin_code == BUILTIN_CUSTOM or self.custom_code is not None


@dataclass
class ModelSummary:
    version: int
    description: str | None
    operator_codes: list[OperatorCode]
    op_counts: dict[int, int] = field(default_factory=dict)  # opcode index -> uses in subgraph 0

    @property
    def custom_ops(self) -> list[str]:
        return sorted({c.custom_code or "?" for c in self.operator_codes if c.is_custom})


def has_identifier(buf: bytes) -> bool:
    return len(buf) >= 8 and buf[4:8] == FILE_IDENTIFIER


def read_summary(buf: bytes) -> ModelSummary:
    """Parse ``buf`` (a whole .tflite file). Raises ValueError when it is not one."""
    if not has_identifier(buf):
        raise ValueError("no TFL3 file identifier")
    model = _Table(buf, _u32(buf, 0))
    codes = []
    for oc in model.tables(1):
        deprecated = oc.scalar(0, "<b", 0)
        builtin = oc.scalar(3, "<i", 0)
        codes.append(OperatorCode(max(deprecated, builtin), oc.string(1)))
    counts: dict[int, int] = {}
    subgraphs = model.tables(2)
    if subgraphs:
        for op in subgraphs[0].tables(3):
            idx = op.scalar(0, "<I", 0)
            if idx >= len(codes):
                raise ValueError(f"operator refers to opcode {idx} of {len(codes)}")
            counts[idx] = counts.get(idx, 0) + 1
    return ModelSummary(
        version=model.scalar(0, "<I", 0),
        description=model.string(3),
        operator_codes=codes,
        op_counts=counts,
    )
