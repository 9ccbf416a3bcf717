"""A minimal, dependency-free reader of the TFLite flatbuffer.

It reads just what edged needs before (or without) building an interpreter: the file
identifier, the operator codes (builtin and custom, e.g. ``edgetpu-custom-op``), how
many times each operator is used, and the model description (:func:`read_summary`);
and, for ``edged inspect``, the whole graph: every subgraph's tensors (type, shape,
shape signature, quantisation, whether the data is a constant), its operators in
execution order with their options, and the buffers (:func:`read_graph`). Every offset
is bounds checked, so a truncated or corrupt file gives a :class:`ValueError`, never a
crash. Field numbers follow tensorflow/lite/schema/schema.fbs.
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

    def table(self, index: int) -> _Table | None:
        at = self._target(index)
        return None if at is None else _Table(self.buf, at)

    def vector(self, index: int, fmt: str) -> tuple:
        """A vector of scalars (``fmt`` one struct code, e.g. ``"i"``), empty when absent."""
        at = self._target(index)
        if at is None:
            return ()
        n = _u32(self.buf, at)
        _check(self.buf, at + 4, struct.calcsize("<" + fmt) * n)
        return struct.unpack_from(f"<{n}{fmt}", self.buf, at + 4)

    def bytes_span(self, index: int) -> tuple[int, int]:
        """(start, length) of a ``[ubyte]`` vector in the file; (0, 0) when absent."""
        at = self._target(index)
        if at is None:
            return (0, 0)
        n = _u32(self.buf, at)
        _check(self.buf, at + 4, n)
        return (at + 4, n)

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


# ------------------------------------------------------------------------------ whole graph

# TensorType, by number (schema.fbs), as numpy-style names.
TENSOR_TYPES: tuple[str, ...] = (
    "float32",  # 0
    "float16",  # 1
    "int32",  # 2
    "uint8",  # 3
    "int64",  # 4
    "string",  # 5
    "bool",  # 6
    "int16",  # 7
    "complex64",  # 8
    "int8",  # 9
    "float64",  # 10
    "complex128",  # 11
    "uint64",  # 12
    "resource",  # 13
    "variant",  # 14
    "uint32",  # 15
    "uint16",  # 16
    "int4",  # 17
    "bfloat16",  # 18
    "int2",  # 19
    "uint4",  # 20
)


def tensor_type_name(code: int) -> str:
    return TENSOR_TYPES[code] if 0 <= code < len(TENSOR_TYPES) else f"type{code}"


@dataclass(frozen=True)
class Tensor:
    index: int
    name: str
    type: int  # TensorType
    shape: tuple[int, ...]
    shape_signature: tuple[int, ...] | None  # None when the file has none (then it equals shape)
    buffer: int
    constant: bool  # its buffer holds data (weights, biases, shapes...)
    scales: tuple[float, ...] = ()
    zero_points: tuple[int, ...] = ()
    quantized_dimension: int = 0
    is_variable: bool = False  # read (and so bounds-checked) with the rest of the table

    @property
    def dtype(self) -> str:
        return tensor_type_name(self.type)

    @property
    def quantized(self) -> bool:
        return any(s != 0.0 for s in self.scales)

    @property
    def dynamic_dims(self) -> tuple[int, ...]:
        """Axes whose size is unknown until run time (-1 in the shape signature)."""
        sig = self.shape_signature if self.shape_signature is not None else self.shape
        return tuple(i for i, d in enumerate(sig) if d < 0)


@dataclass(frozen=True)
class Operator:
    index: int  # position in the subgraph: the execution order
    opcode_index: int
    inputs: tuple[int, ...]  # tensor indices, -1 for an omitted optional input
    outputs: tuple[int, ...]
    options_type: int
    options: _Table | None = field(default=None, repr=False, compare=False)
    custom_options_size: int = 0  # read (and so bounds-checked): a damaged custom options vector is refused

    def option(self, index: int, fmt: str, default: int) -> int:
        """A scalar field of the operator's builtin options table (its default when absent)."""
        return default if self.options is None else self.options.scalar(index, "<" + fmt, default)


@dataclass
class Subgraph:
    name: str | None
    tensors: list[Tensor]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    operators: list[Operator]


@dataclass
class Graph:
    version: int
    description: str | None
    operator_codes: list[OperatorCode]
    subgraphs: list[Subgraph]
    buffer_spans: list[tuple[int, int]]  # (start, length) in the file, (0, 0) for an empty buffer
    buf: bytes = field(repr=False, default=b"")

    def buffer_data(self, tensor: Tensor) -> bytes:
        """The constant data of ``tensor`` (b"" when it has none)."""
        if not 0 < tensor.buffer < len(self.buffer_spans):
            return b""
        start, n = self.buffer_spans[tensor.buffer]
        return bytes(self.buf[start : start + n])


def _buffer_span(buf: bytes, table: _Table) -> tuple[int, int]:
    start, n = table.bytes_span(0)
    if n:
        return (start, n)
    # models over 2 GB keep buffers after the flatbuffer: offset (from the file start) and size
    offset = table.scalar(1, "<Q", 0)
    size = table.scalar(2, "<Q", 0)
    if offset > 1 and size:
        _check(buf, offset, size)
        return (offset, size)
    return (0, 0)


def _tensor(index: int, t: _Table, has_data: list[bool]) -> Tensor:
    signature = t.vector(7, "i")
    buffer = t.scalar(2, "<I", 0)
    q = t.table(4)
    scales: tuple[float, ...] = ()
    zero_points: tuple[int, ...] = ()
    qdim = 0
    if q is not None:
        scales = tuple(q.vector(2, "f"))
        zero_points = tuple(q.vector(3, "q"))
        qdim = q.scalar(6, "<i", 0)
    return Tensor(
        index=index,
        name=t.string(3) or "",
        type=t.scalar(1, "<b", 0),
        shape=tuple(t.vector(0, "i")),
        shape_signature=tuple(signature) if signature else None,
        buffer=buffer,
        constant=0 < buffer < len(has_data) and has_data[buffer],
        scales=scales,
        zero_points=zero_points,
        quantized_dimension=qdim,
        is_variable=bool(t.scalar(5, "<B", 0)),
    )


def read_graph(buf: bytes) -> Graph:
    """Parse every subgraph of ``buf`` (a whole .tflite file). Raises ValueError when it is not one."""
    summary = read_summary(buf)
    model = _Table(buf, _u32(buf, 0))
    spans = [_buffer_span(buf, b) for b in model.tables(4)]
    has_data = [n > 0 for _, n in spans]
    subgraphs = []
    for sg in model.tables(2):
        tensors = [_tensor(i, t, has_data) for i, t in enumerate(sg.tables(0))]
        operators = []
        for i, op in enumerate(sg.tables(3)):
            idx = op.scalar(0, "<I", 0)
            if idx >= len(summary.operator_codes):
                raise ValueError(f"operator refers to opcode {idx} of {len(summary.operator_codes)}")
            ins = tuple(op.vector(1, "i"))
            outs = tuple(op.vector(2, "i"))
            for t in ins + outs:
                if not -1 <= t < len(tensors):  # -1: an omitted optional input
                    raise ValueError(f"operator {i} refers to tensor {t} of {len(tensors)}")
            operators.append(
                Operator(
                    index=i,
                    opcode_index=idx,
                    inputs=ins,
                    outputs=outs,
                    options_type=op.scalar(3, "<B", 0),
                    options=op.table(4),
                    custom_options_size=op.bytes_span(5)[1],
                )
            )
        inputs, outputs = tuple(sg.vector(1, "i")), tuple(sg.vector(2, "i"))
        for t in inputs + outputs:
            if not 0 <= t < len(tensors):
                raise ValueError(f"subgraph input/output refers to tensor {t} of {len(tensors)}")
        subgraphs.append(Subgraph(sg.string(4), tensors, inputs, outputs, operators))
    return Graph(
        version=summary.version,
        description=summary.description,
        operator_codes=summary.operator_codes,
        subgraphs=subgraphs,
        buffer_spans=spans,
        buf=buf,
    )
