"""The Edge TPU's operator rules: what each operator needs to map (types, constant
parameters, static shapes, rank) and the documented per-operator limitations.

:func:`check_op` checks one operator alone; :mod:`edged.compat` places the cut.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Callable

from . import tflite_schema
from .compat_report import (
    COMPILED,
    DATA_TYPE,
    DYNAMIC,
    LIMITATION,
    MAPPED,
    NOT_CONSTANT,
    NOT_SUPPORTED,
    RANK,
    OpCheck,
)
from .edgetpu_ops import EDGETPU_OPS, NOT_SUPPORTED_HINTS, builtin_name
from .model import EDGETPU_CUSTOM_OP

EIGHT_BIT = ("uint8", "int8")
PARAM_TYPES = ("uint8", "int8", "int32", "int64")  # constant weights, biases, shapes and axes

# Which inputs of an operator are parameters that must be constant at compile time.
PARAM_INPUTS: dict[str, tuple[int, ...]] = {
    "CONV_2D": (1, 2),
    "DEPTHWISE_CONV_2D": (1, 2),
    "FULLY_CONNECTED": (1, 2),
    "TRANSPOSE_CONV": (0, 1, 3),
    "PAD": (1,),
    "MEAN": (1,),
    "SUM": (1,),
    "REDUCE_MAX": (1,),
    "REDUCE_MIN": (1,),
    "RESHAPE": (1,),
    "RESIZE_BILINEAR": (1,),
    "RESIZE_NEAREST_NEIGHBOR": (1,),
    "TRANSPOSE": (1,),
    "SLICE": (1, 2),
    "STRIDED_SLICE": (1, 2, 3),
    "EXPAND_DIMS": (1,),
    "SPLIT": (0,),
    "PRELU": (1,),
}
SOFTMAX_MAX_ELEMENTS = 16000
# Operators whose output size follows a parameter: computed at run time, it makes a dynamic-sized tensor.
SIZE_FROM_PARAM = {"RESHAPE", "RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR", "TRANSPOSE_CONV", "PAD", "SLICE"}
SIZE_FROM_PARAM |= {"STRIDED_SLICE"}


def op_name(graph: tflite_schema.Graph, op: tflite_schema.Operator) -> tuple[str, bool]:
    code = graph.operator_codes[op.opcode_index]
    if code.is_custom:
        return code.custom_code or "?", True
    return builtin_name(code.builtin_code), False


def _ints(graph: tflite_schema.Graph, t: tflite_schema.Tensor) -> list[int] | None:
    """The values of a constant int32/int64 tensor (axes, paddings, strides), None when not readable."""
    data = graph.buffer_data(t)
    fmt = {"int32": "i", "int64": "q"}.get(t.dtype)
    if not data or fmt is None or len(data) % struct.calcsize(fmt):
        return None
    return list(struct.unpack(f"<{len(data) // struct.calcsize(fmt)}{fmt}", data))


def _fused(op: tflite_schema.Operator, index: int) -> int:
    return op.option(index, "b", 0)


_ACTIVATIONS = {1: "RELU", 2: "RELU_N1_TO_1", 3: "RELU6", 4: "TANH", 5: "SIGN_BIT"}


@dataclass
class _Op:
    """One operator under check: its inputs (None for an omitted one) and first output."""

    graph: tflite_schema.Graph
    op: tflite_schema.Operator
    ins: list[tflite_schema.Tensor | None]
    out: tflite_schema.Tensor | None

    @property
    def first(self) -> tflite_schema.Tensor | None:
        return self.ins[0] if self.ins else None

    def axes(self, t: tflite_schema.Tensor | None, rank: int) -> list[int] | None:
        values = _ints(self.graph, t) if t is not None else None
        return None if values is None else [a + rank if a < 0 else a for a in values]


def _pool(o: _Op) -> str | None:
    if _fused(o.op, 5):
        return f"fused activation {_ACTIVATIONS.get(_fused(o.op, 5), _fused(o.op, 5))} (pooling allows none)"
    return None


def _concatenation(o: _Op) -> str | None:
    op, ins = o.op, o.ins
    if _fused(op, 1):
        return f"fused activation {_ACTIVATIONS.get(_fused(op, 1), _fused(op, 1))} (concatenation allows none)"
    consts = [t for t in ins if t is not None and t.constant]
    if consts:
        if len(ins) != 2:
            return f"a constant input among {len(ins)} inputs (allowed only as one of 2, all zeros)"
        c = consts[0]
        zp = c.zero_points[0] if c.zero_points else 0
        data = o.graph.buffer_data(c)
        if c.dtype in EIGHT_BIT and any((b - 256 if c.dtype == "int8" and b > 127 else b) != zp for b in data):
            return f"constant input '{c.name}' is not all zeros (only zero padding is allowed)"
    return None


def _conv_2d(o: _Op) -> str | None:
    op = o.op
    if op.option(4, "i", 1) != op.option(5, "i", 1):
        return f"dilation {op.option(5, 'i', 1)}x{op.option(4, 'i', 1)} differs in y and x"
    return None


def _depthwise_conv_2d(o: _Op) -> str | None:
    op = o.op
    if op.option(5, "i", 1) != op.option(6, "i", 1):
        return f"dilation {op.option(6, 'i', 1)}x{op.option(5, 'i', 1)} differs in y and x"
    return None


def _fully_connected(o: _Op) -> str | None:
    if o.op.option(1, "b", 0) != 0:
        return "weights in a shuffled format (only the default format is supported)"
    if o.out is not None and len([d for d in o.out.shape[1:]]) > 1:
        return f"output {list(o.out.shape)} is not one-dimensional (keep_num_dims)"
    return None


def _reduce(name: str) -> Callable[[_Op], str | None]:
    def check(o: _Op) -> str | None:
        first = o.first
        if first is None or len(o.ins) <= 1:
            return None
        rank = len(first.shape)
        reduced = o.axes(o.ins[1], rank)
        if reduced is not None:
            if 0 in reduced and rank > 1:
                return f"reduces the batch dimension (axes {reduced})"
            if name == "MEAN" and rank >= 3 and rank - 1 in reduced and first.shape[-1] % 4:
                return f"z-reduction over {first.shape[-1]} channels (must be a multiple of 4)"
        return None

    return check


def _pack(o: _Op) -> str | None:
    if o.op.option(1, "i", 0) == 0 and o.out is not None and len(o.out.shape) > 1:
        return "packs along the batch dimension"
    return None


def _pad(o: _Op) -> str | None:
    if len(o.ins) > 1 and o.ins[1] is not None:
        pads = _ints(o.graph, o.ins[1])
        if pads and len(pads) >= 2 and (pads[0] or pads[1]) and o.first is not None and len(o.first.shape) == 4:
            return f"pads the batch dimension ({pads[0]}, {pads[1]})"
    return None


def _prelu(o: _Op) -> str | None:
    if len(o.ins) > 1 and o.ins[1] is not None:
        alpha = o.ins[1].shape
        if len([d for d in alpha[:-1] if d > 1]) > 0:
            return f"alpha {list(alpha)} is not 1-dimensional (Keras PReLU needs shared_axes=[1,2])"
    return None


def _softmax(o: _Op) -> str | None:
    first = o.first
    if first is None:
        return None
    big = [d for d in first.shape if d > 1]
    if len(big) > 1:
        return f"input {list(first.shape)} is not 1-D"
    n = 1
    for d in first.shape:
        n *= max(d, 1)
    if n > SOFTMAX_MAX_ELEMENTS:
        return f"input has {n} elements (at most {SOFTMAX_MAX_ELEMENTS:,})"
    return None


def _split(o: _Op) -> str | None:
    ins = o.ins
    if ins and ins[0] is not None and len(ins) > 1 and ins[1] is not None:
        axis = o.axes(ins[0], len(ins[1].shape))
        if axis == [0] and len(ins[1].shape) > 1:
            return "splits the batch dimension"
    return None


def _strided_slice(o: _Op) -> str | None:
    op, ins = o.op, o.ins
    if op.option(2, "i", 0):
        return "ellipsis mask is set"
    if op.option(3, "i", 0):
        return "new-axis mask is set"
    strides = _ints(o.graph, ins[3]) if len(ins) > 3 and ins[3] is not None else None
    if strides and any(s != 1 for s in strides):
        return f"strides {strides} (only 1 is supported)"
    return None


# the documented per-operator limitations that can be read from the file, by operator
LIMITS: dict[str, Callable[[_Op], str | None]] = {
    "AVERAGE_POOL_2D": _pool,
    "MAX_POOL_2D": _pool,
    "CONCATENATION": _concatenation,
    "CONV_2D": _conv_2d,
    "DEPTHWISE_CONV_2D": _depthwise_conv_2d,
    "FULLY_CONNECTED": _fully_connected,
    **{name: _reduce(name) for name in ("MEAN", "SUM", "REDUCE_MAX", "REDUCE_MIN")},
    "PACK": _pack,
    "PAD": _pad,
    "PRELU": _prelu,
    "SOFTMAX": _softmax,
    "SPLIT": _split,
    "STRIDED_SLICE": _strided_slice,
}


def limitation(
    graph: tflite_schema.Graph, sg: tflite_schema.Subgraph, op: tflite_schema.Operator, name: str
) -> str | None:
    """The documented per-operator limitation this operator breaks, as one line; None when none (that we can see)."""
    T = sg.tensors
    ins = [T[i] if i >= 0 else None for i in op.inputs]
    out = T[op.outputs[0]] if op.outputs else None
    rule = LIMITS.get(name)
    return None if rule is None else rule(_Op(graph, op, ins, out))


def check_op(graph: tflite_schema.Graph, sg: tflite_schema.Subgraph, op: tflite_schema.Operator) -> OpCheck:
    name, custom = op_name(graph, op)
    check = OpCheck(op.index, name, custom, MAPPED)

    def fail(status: str, reason: str) -> OpCheck:
        check.status = check.own_status = status
        check.reason = reason
        return check

    if custom:
        if name == EDGETPU_CUSTOM_OP:
            return fail(COMPILED, "")
        return fail(NOT_SUPPORTED, f"{NOT_SUPPORTED_HINTS['CUSTOM']}")
    if name == "DEQUANTIZE":  # what edgetpu_compiler reports for it
        return fail(DATA_TYPE, NOT_SUPPORTED_HINTS[name])
    if name not in EDGETPU_OPS:
        return fail(
            NOT_SUPPORTED, NOT_SUPPORTED_HINTS.get(name, f"{name} is not in the Edge TPU's supported operations")
        )
    T = sg.tensors
    params = set(PARAM_INPUTS.get(name, ()))
    for pos, i in enumerate(op.inputs):
        if i < 0:
            continue
        t = T[i]
        if pos in params and not t.constant:
            return fail(
                NOT_CONSTANT, f"input '{t.name}' ({'filter/bias' if pos < 3 else 'parameter'}) is computed at run time"
            )
    for i in (*op.inputs, *op.outputs):
        if i < 0:
            continue
        t = T[i]
        allowed = PARAM_TYPES if t.constant else EIGHT_BIT
        if t.dtype not in allowed:
            what = "constant" if t.constant else "tensor"
            return fail(DATA_TYPE, f"{t.dtype} {what} '{t.name}' (the Edge TPU computes on 8-bit quantized tensors)")
        if not t.constant and t.dtype in EIGHT_BIT and not t.quantized:
            return fail(DATA_TYPE, f"{t.dtype} tensor '{t.name}' has no quantization parameters")
    for i in (*op.inputs, *op.outputs):
        if i < 0 or T[i].constant:
            continue
        t = T[i]
        dyn = [a for a in t.dynamic_dims if a != 0]
        if dyn:
            sig = list(t.shape_signature or t.shape)
            return fail(DYNAMIC, f"tensor '{t.name}' has a dynamic size {sig} (static shapes only)")
        if len(t.shape) > 3 and any(d != 1 for d in t.shape[:-3]):
            return fail(
                RANK, f"tensor '{t.name}' {list(t.shape)}: only the 3 innermost dimensions may be larger than 1"
            )
    why = limitation(graph, sg, op, name)
    if why:
        return fail(LIMITATION, f"{EDGETPU_OPS[name].doc_name}: {why}")
    return check


def is_input_quantize(sg: tflite_schema.Subgraph, op: tflite_schema.Operator, name: str) -> bool:
    if name != "QUANTIZE" or not op.inputs or not op.outputs or op.inputs[0] < 0 or op.outputs[0] < 0:
        return False
    src, dst = sg.tensors[op.inputs[0]], sg.tensors[op.outputs[0]]
    return op.inputs[0] in sg.inputs and src.dtype == "float32" and dst.dtype in EIGHT_BIT
