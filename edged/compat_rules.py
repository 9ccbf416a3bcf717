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
    CERTAIN,
    COMPILED,
    DATA_TYPE,
    DYNAMIC,
    LIKELY,
    LIMITATION,
    MAPPED,
    NOT_CONSTANT,
    NOT_SUPPORTED,
    RANK,
    UNKNOWN,
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
    "TILE": (1,),
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


def _dilations(o: _Op, w_field: int) -> tuple[int, int, bool]:
    """(dilation y, dilation x, whether they differ in a way that matters): along a dimension the kernel
    is 1 wide in, the dilation changes nothing, and compiler 16 maps such a Conv2D (dilation 2x1, 1 wide)."""
    dy, dx = o.op.option(w_field + 1, "i", 1), o.op.option(w_field, "i", 1)
    kernel = o.ins[1].shape if len(o.ins) > 1 and o.ins[1] is not None and len(o.ins[1].shape) == 4 else None
    ky, kx = (kernel[1], kernel[2]) if kernel else (2, 2)
    return dy, dx, dy != dx and ky > 1 and kx > 1


def _conv_2d(o: _Op) -> str | None:
    dy, dx, differ = _dilations(o, 4)
    return f"dilation {dy}x{dx} differs in y and x" if differ else None


def _depthwise_conv_2d(o: _Op) -> str | None:
    dy, dx, differ = _dilations(o, 5)
    return f"dilation {dy}x{dx} differs in y and x" if differ else None


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
    """Coral's table says 1-D with at most 16,000 elements; the compiler also takes an N-D input (the
    softmax runs along its innermost axis), so the bound is checked on that axis."""
    first = o.first
    if first is None or not first.shape:
        return None
    n = first.shape[-1]
    if n > SOFTMAX_MAX_ELEMENTS:
        return f"the softmax axis has {n} elements (at most {SOFTMAX_MAX_ELEMENTS:,})"
    return None


def _resize(o: _Op) -> str | None:
    """Fitted to Coral's compiled models: an integer up- or downscale maps; a non-integer ratio
    (33 -> 513) and the upsampling of a 1x1 map (a broadcast: Coral's slim DeepLab uses TILE instead)
    stay on the CPU. The compiler's limits depend on the sizes and are not published."""
    src, dst = o.first, o.out
    if src is None or dst is None or len(src.shape) != 4 or len(dst.shape) != 4:
        return None
    for a, b in zip(src.shape[1:3], dst.shape[1:3]):
        if a == 1 and b > 1:
            return f"upsamples a 1x1 map to {dst.shape[1]}x{dst.shape[2]} (a broadcast: TILE maps it)"
        if b % a and a % b:
            return f"{src.shape[1]}x{src.shape[2]} -> {dst.shape[1]}x{dst.shape[2]} is not an integer scale"
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
    "RESIZE_BILINEAR": _resize,
    "RESIZE_NEAREST_NEIGHBOR": _resize,
    "SPLIT": _split,
    "STRIDED_SLICE": _strided_slice,
}


# rules fitted to what the compiler did rather than documented: their verdicts are "likely"
FITTED = {"RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR", "TILE", "UNIDIRECTIONAL_SEQUENCE_LSTM"}
SIZE_DEPENDENT = {"RESHAPE"}  # "might not be mapped for large tensor sizes": not decidable here


def _operator(graph: tflite_schema.Graph, sg: tflite_schema.Subgraph, op: tflite_schema.Operator) -> _Op:
    T = sg.tensors
    return _Op(graph, op, [T[i] if i >= 0 else None for i in op.inputs], T[op.outputs[0]] if op.outputs else None)


def limitation(o: _Op, name: str) -> str | None:
    """The per-operator limitation this operator breaks, as one line; None when none (that we can see)."""
    rule = LIMITS.get(name)
    return None if rule is None else rule(o)


def confidence(o: _Op, name: str) -> str:
    """How sure "maps" is for an operator that passes every rule."""
    if name in SIZE_DEPENDENT:
        return UNKNOWN
    if name in FITTED:
        return LIKELY
    if name == "SOFTMAX":  # the table says 1-D; an N-D softmax maps, by the compiler's logs
        return LIKELY if o.first is not None and sum(d > 1 for d in o.first.shape) > 1 else CERTAIN
    if name in ("CONV_2D", "DEPTHWISE_CONV_2D"):
        w = 4 if name == "CONV_2D" else 5
        return LIKELY if o.op.option(w, "i", 1) != o.op.option(w + 1, "i", 1) else CERTAIN
    return CERTAIN


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
        if name == "UNIDIRECTIONAL_SEQUENCE_LSTM" and t.dtype == "int16":
            continue  # an 8-bit LSTM keeps its cell state in int16: the compiler maps it (Coral's keras_lstm)
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
    o = _operator(graph, sg, op)
    why = limitation(o, name)
    if why:
        fail(LIMITATION, f"{EDGETPU_OPS[name].doc_name}: {why}")
    check.confidence = (LIKELY if name in FITTED else CERTAIN) if why else confidence(o, name)
    return check


PROLOGUE_OPS = ("CAST", "QUANTIZE", "DEQUANTIZE")  # what converts a model input before the Edge TPU


def is_prologue_op(
    sg: tflite_schema.Subgraph, op: tflite_schema.Operator, name: str, maps: bool, ready: set[int]
) -> bool:
    """A type conversion that does not map, reading only ``ready`` tensors (the graph inputs and the
    prologue's outputs so far) and constants: movenet's CAST uint8->float32 + QUANTIZE, a float QUANTIZE."""
    if name not in PROLOGUE_OPS or maps or not op.inputs or not op.outputs:
        return False
    inputs = [i for i in op.inputs if i >= 0 and not sg.tensors[i].constant]
    return bool(inputs) and all(i in ready for i in inputs)
