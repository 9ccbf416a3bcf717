"""Will a .tflite model map to the Edge TPU? A static check, from the flatbuffer alone.

``edged inspect`` uses it on the board itself, where neither TensorFlow nor
edgetpu_compiler (x86-64 only) runs. :func:`analyse` reads the main subgraph's
operators in execution order and checks each against Coral's table of supported
operations (:mod:`edged.edgetpu_ops`) and the general requirements: 8-bit quantised
tensors, static shapes, at most three dimensions larger than 1 (the innermost ones),
parameters (filters, biases, shapes, axes) constant at compile time, and the per-operator
limitations that can be read from the file.

Like edgetpu_compiler, it cuts the graph once: the Edge TPU gets the operators before the
first one that cannot map, and that operator and everything after it run on the CPU
(those that would otherwise map are reported as "More than one subgraph is not
supported", the compiler's words). A quantize of a float input at the start of the graph
stays on the CPU without cutting it, as the compiler does.

For a model that edgetpu_compiler already compiled (it holds an ``edgetpu-custom-op``) it
reports the compiled segments and the operators left on the CPU. The compiler still has
the last word: it can refuse or split a model for reasons a static check cannot see (the
on-chip memory, precision of a resize, large reshapes).
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import tflite_schema
from .edgetpu_ops import EDGETPU_OPS, NOT_SUPPORTED_HINTS, builtin_name
from .errors import ModelError
from .model import EDGETPU_CUSTOM_OP, read_tflite_bytes

# The compiler's own status strings where it has one; ours where it says "unspecified".
MAPPED = "Mapped to Edge TPU"
NOT_SUPPORTED = "Operation not supported"
DATA_TYPE = "Operation is working on an unsupported data type"
RANK = "Tensor has unsupported rank (up to 3 innermost dimensions mapped)"
NOT_CONSTANT = "Filter, bias, or other param is not constant at compile-time"
LIMITATION = "Operation is otherwise supported, but not mapped due to a known limitation"
DYNAMIC = "Dynamic-sized tensors are not supported"
AFTER_CUT = "More than one subgraph is not supported"
INPUT_QUANTIZE = "Runs on the CPU: quantizes the float input before the Edge TPU"
MODEL_REFUSED = "Operation is otherwise supported, but the compiler refuses the model"
COMPILED = "Compiled for the Edge TPU"
ON_CPU = "Runs on the CPU"

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


@dataclass
class OpCheck:
    index: int  # position in execution order
    name: str  # BuiltinOperator name, or the custom operator's name
    custom: bool
    status: str
    reason: str | None = None  # one line, for every operator that does not map
    own_status: str = MAPPED  # what the operator alone would get, before the cut

    @property
    def mapped(self) -> bool:
        return self.status in (MAPPED, COMPILED)

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "operator": self.name,
            "custom": self.custom,
            "status": self.status,
            "mapped": self.mapped,
            "reason": self.reason,
        }


@dataclass
class CompatReport:
    compiled: bool
    operators: list[OpCheck]  # the main subgraph, in execution order
    model_errors: list[str] = field(default_factory=list)  # the compiler would refuse the whole model
    notes: list[str] = field(default_factory=list)  # what a static check cannot decide
    tpu_segments: int = 0  # compiled models: edgetpu-custom-op instances

    @property
    def first_unmapped(self) -> OpCheck | None:
        """The cut: the first operator that runs on the CPU (a leading input quantize aside)."""
        if self.compiled:
            return None
        return next((o for o in self.operators if not o.mapped and o.status != INPUT_QUANTIZE), None)

    @property
    def tpu_count(self) -> int:
        return sum(o.mapped for o in self.operators)

    @property
    def cpu_count(self) -> int:
        return len(self.operators) - self.tpu_count

    @property
    def after_cut(self) -> list[OpCheck]:
        """Operators after the cut that would otherwise map."""
        return [o for o in self.operators if o.status == AFTER_CUT]

    @property
    def verdict(self) -> str:
        n = len(self.operators)
        if self.compiled:
            return (
                f"compiled for the Edge TPU: {self.tpu_segments} {EDGETPU_CUSTOM_OP} segment(s), "
                f"{self.cpu_count} operator(s) left on the CPU"
            )
        if self.model_errors:
            return "edgetpu_compiler would refuse this model: " + "; ".join(self.model_errors)
        cut = self.first_unmapped
        if cut is None:
            return f"all {self.tpu_count} of {n} operators would map to the Edge TPU" + (
                f" ({self.cpu_count} input quantize on the CPU)" if self.cpu_count else ""
            )
        if self.tpu_count == 0:
            return f"no operator would map to the Edge TPU: the first, #{cut.index} {cut.name}, cannot"
        rest = n - cut.index - 1
        tail = f"it and the {rest} operator(s) after it run on the CPU" if rest else "the last operator, on the CPU"
        return (
            f"{self.tpu_count} of {n} operators would map to the Edge TPU; "
            f"the graph is cut at #{cut.index} {cut.name}: {tail}"
        )

    def table(self) -> list[tuple[str, int, str]]:
        """(operator, count, status) rows in order of first appearance, as edgetpu_compiler prints them."""
        rows: dict[tuple[str, str], int] = {}
        for o in self.operators:
            rows[(o.name, o.status)] = rows.get((o.name, o.status), 0) + 1
        return [(name, count, status) for (name, status), count in rows.items()]

    def to_dict(self) -> dict[str, Any]:
        cut = self.first_unmapped
        return {
            "compiled": self.compiled,
            **({"tpu_segments": self.tpu_segments} if self.compiled else {}),
            "verdict": self.verdict,
            # a compiled model does not record how many operators its Edge TPU segments hold
            "operations_on_edgetpu": None if self.compiled else self.tpu_count,
            "operations_on_cpu": self.cpu_count,
            "first_unmapped": None if cut is None else {"index": cut.index, "operator": cut.name, "reason": cut.reason},
            "after_cut_otherwise_supported": [{"index": o.index, "operator": o.name} for o in self.after_cut],
            "model_errors": self.model_errors,
            "notes": self.notes,
            "table": [{"operator": n, "count": c, "status": s} for n, c, s in self.table()],
            "operators": [o.to_dict() for o in self.operators],
        }


# ---------------------------------------------------------------------------------- reading


def read_model_file(path: str | Path) -> tuple[bytes, tflite_schema.Graph]:
    """The bytes and parsed graph of a .tflite file; every failure is a one-line ModelError."""
    p = Path(path)
    data = read_tflite_bytes(p)
    try:
        graph = tflite_schema.read_graph(data)
    except (ValueError, struct.error) as exc:
        raise ModelError(f"{p} is corrupt or truncated ({exc}); copy the model again") from None
    if not graph.subgraphs:
        raise ModelError(f"{p} is corrupt: it has no subgraph")
    return data, graph


def inspect_file(path: str | Path) -> tuple[bytes, tflite_schema.Graph, CompatReport]:
    """Read and check a model; a corrupt file is a one-line ModelError whichever part of it is broken."""
    data, graph = read_model_file(path)
    try:
        report = analyse(graph)
    except (ValueError, struct.error, IndexError) as exc:
        raise ModelError(f"{path} is corrupt or truncated ({exc}); copy the model again") from None
    return data, graph, report


def op_name(graph: tflite_schema.Graph, op: tflite_schema.Operator) -> tuple[str, bool]:
    code = graph.operator_codes[op.opcode_index]
    if code.is_custom:
        return code.custom_code or "?", True
    return builtin_name(code.builtin_code), False


def operator_counts(graph: tflite_schema.Graph) -> list[tuple[str, int]]:
    """(operator, uses) over the main subgraph, most used first."""
    counts: dict[str, int] = {}
    for op in graph.subgraphs[0].operators:
        name = op_name(graph, op)[0]
        counts[name] = counts.get(name, 0) + 1
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


def tensor_dict(t: tflite_schema.Tensor) -> dict[str, Any]:
    """A tensor as ``edged inspect --json`` shows it (the interpreter's TensorSpec layout)."""
    q: dict[str, Any] = {
        "scale": t.scales[0] if t.scales else 0.0,
        "zero_point": t.zero_points[0] if t.zero_points else 0,
    }
    if len(t.scales) > 1:
        q.update(scales=list(t.scales), zero_points=list(t.zero_points), axis=t.quantized_dimension)
    d: dict[str, Any] = {"index": t.index, "name": t.name, "shape": list(t.shape), "dtype": t.dtype, "quantization": q}
    if t.shape_signature is not None and t.shape_signature != t.shape:
        d["shape_signature"] = list(t.shape_signature)
    return d


def file_facts(data: bytes) -> dict[str, Any]:
    return {"sha256": hashlib.sha256(data).hexdigest(), "size_bytes": len(data)}


# --------------------------------------------------------------------------------- checking


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


def _limitation(
    graph: tflite_schema.Graph, sg: tflite_schema.Subgraph, op: tflite_schema.Operator, name: str
) -> str | None:
    """The documented per-operator limitation this operator breaks, as one line; None when none (that we can see)."""
    T = sg.tensors
    ins = [T[i] if i >= 0 else None for i in op.inputs]
    out = T[op.outputs[0]] if op.outputs else None
    first = ins[0] if ins else None

    def axes(t: tflite_schema.Tensor | None, rank: int) -> list[int] | None:
        values = _ints(graph, t) if t is not None else None
        return None if values is None else [a + rank if a < 0 else a for a in values]

    if name in ("AVERAGE_POOL_2D", "MAX_POOL_2D") and _fused(op, 5):
        return f"fused activation {_ACTIVATIONS.get(_fused(op, 5), _fused(op, 5))} (pooling allows none)"
    if name == "CONCATENATION":
        if _fused(op, 1):
            return f"fused activation {_ACTIVATIONS.get(_fused(op, 1), _fused(op, 1))} (concatenation allows none)"
        consts = [t for t in ins if t is not None and t.constant]
        if consts:
            if len(ins) != 2:
                return f"a constant input among {len(ins)} inputs (allowed only as one of 2, all zeros)"
            c = consts[0]
            zp = c.zero_points[0] if c.zero_points else 0
            data = graph.buffer_data(c)
            if c.dtype in EIGHT_BIT and any((b - 256 if c.dtype == "int8" and b > 127 else b) != zp for b in data):
                return f"constant input '{c.name}' is not all zeros (only zero padding is allowed)"
    if name == "CONV_2D" and op.option(4, "i", 1) != op.option(5, "i", 1):
        return f"dilation {op.option(5, 'i', 1)}x{op.option(4, 'i', 1)} differs in y and x"
    if name == "DEPTHWISE_CONV_2D" and op.option(5, "i", 1) != op.option(6, "i", 1):
        return f"dilation {op.option(6, 'i', 1)}x{op.option(5, 'i', 1)} differs in y and x"
    if name == "FULLY_CONNECTED":
        if op.option(1, "b", 0) != 0:
            return "weights in a shuffled format (only the default format is supported)"
        if out is not None and len([d for d in out.shape[1:]]) > 1:
            return f"output {list(out.shape)} is not one-dimensional (keep_num_dims)"
    if name in ("MEAN", "SUM", "REDUCE_MAX", "REDUCE_MIN") and first is not None and len(ins) > 1:
        rank = len(first.shape)
        reduced = axes(ins[1], rank)
        if reduced is not None:
            if 0 in reduced and rank > 1:
                return f"reduces the batch dimension (axes {reduced})"
            if name == "MEAN" and rank >= 3 and rank - 1 in reduced and first.shape[-1] % 4:
                return f"z-reduction over {first.shape[-1]} channels (must be a multiple of 4)"
    if name == "PACK" and op.option(1, "i", 0) == 0 and out is not None and len(out.shape) > 1:
        return "packs along the batch dimension"
    if name == "PAD" and len(ins) > 1 and ins[1] is not None:
        pads = _ints(graph, ins[1])
        if pads and len(pads) >= 2 and (pads[0] or pads[1]) and first is not None and len(first.shape) == 4:
            return f"pads the batch dimension ({pads[0]}, {pads[1]})"
    if name == "PRELU" and len(ins) > 1 and ins[1] is not None:
        alpha = ins[1].shape
        if len([d for d in alpha[:-1] if d > 1]) > 0:
            return f"alpha {list(alpha)} is not 1-dimensional (Keras PReLU needs shared_axes=[1,2])"
    if name == "SOFTMAX" and first is not None:
        big = [d for d in first.shape if d > 1]
        if len(big) > 1:
            return f"input {list(first.shape)} is not 1-D"
        n = 1
        for d in first.shape:
            n *= max(d, 1)
        if n > SOFTMAX_MAX_ELEMENTS:
            return f"input has {n} elements (at most {SOFTMAX_MAX_ELEMENTS:,})"
    if name == "SPLIT" and ins and ins[0] is not None and len(ins) > 1 and ins[1] is not None:
        axis = axes(ins[0], len(ins[1].shape))
        if axis == [0] and len(ins[1].shape) > 1:
            return "splits the batch dimension"
    if name == "STRIDED_SLICE":
        if op.option(2, "i", 0):
            return "ellipsis mask is set"
        if op.option(3, "i", 0):
            return "new-axis mask is set"
        strides = _ints(graph, ins[3]) if len(ins) > 3 and ins[3] is not None else None
        if strides and any(s != 1 for s in strides):
            return f"strides {strides} (only 1 is supported)"
    return None


def _check_op(graph: tflite_schema.Graph, sg: tflite_schema.Subgraph, op: tflite_schema.Operator) -> OpCheck:
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
    why = _limitation(graph, sg, op, name)
    if why:
        return fail(LIMITATION, f"{EDGETPU_OPS[name].doc_name}: {why}")
    return check


def _is_input_quantize(sg: tflite_schema.Subgraph, op: tflite_schema.Operator, name: str) -> bool:
    if name != "QUANTIZE" or not op.inputs or not op.outputs or op.inputs[0] < 0 or op.outputs[0] < 0:
        return False
    src, dst = sg.tensors[op.inputs[0]], sg.tensors[op.outputs[0]]
    return op.inputs[0] in sg.inputs and src.dtype == "float32" and dst.dtype in EIGHT_BIT


def analyse(graph: tflite_schema.Graph) -> CompatReport:
    sg = graph.subgraphs[0]
    checks = [_check_op(graph, sg, op) for op in sg.operators]
    compiled = any(c.status == COMPILED for c in checks)
    report = CompatReport(compiled=compiled, operators=checks)
    if compiled:
        report.tpu_segments = sum(c.status == COMPILED for c in checks)
        for c in checks:
            if c.status != COMPILED:
                c.status = ON_CPU
                c.reason = None
        report.notes.append(
            "edgetpu_compiler replaced the mapped operators by its custom op: their number is not recorded in the file"
        )
        return report

    # whole-model conditions under which the compiler refuses to compile at all
    if (
        checks
        and all(c.own_status in (DATA_TYPE, NOT_SUPPORTED) for c in checks)
        and any(c.own_status == DATA_TYPE for c in checks)
    ):
        eight_bit = [t for t in sg.tensors if not t.constant and t.dtype in EIGHT_BIT and t.quantized]
        if not eight_bit:
            report.model_errors.append("the model is not quantized (it computes in floating point)")
    dynamic = [c for c in checks if c.own_status == DYNAMIC]
    if dynamic:
        report.model_errors.append(f"it has dynamic-sized tensors ({len(dynamic)} operator(s) use them)")
    sized = [c for c in checks if c.own_status == NOT_CONSTANT and c.name in SIZE_FROM_PARAM]
    if sized:
        first = sized[0]
        report.model_errors.append(
            f"it has dynamic-sized tensors (#{first.index} {first.name} takes its size from values computed at run "
            "time; a Keras Flatten without a fixed batch size does that: convert with batch_size=1)"
        )
    batch_dynamic = sorted({t.name for t in sg.tensors if not t.constant and t.dynamic_dims == (0,)})
    if batch_dynamic and not dynamic:
        report.notes.append(
            f"{len(batch_dynamic)} tensor(s) have a dynamic batch size in the signature (e.g. '{batch_dynamic[0]}'); "
            "the shapes stored in the file are what is checked: convert with a fixed batch size of 1 to be sure"
        )

    # the prologue (float input quantize), then the single cut
    start = 0
    while start < len(checks) and _is_input_quantize(sg, sg.operators[start], checks[start].name):
        c = checks[start]
        c.status = INPUT_QUANTIZE
        c.reason = "quantizes a float32 model input: edgetpu_compiler leaves it to the CPU"
        start += 1
    if report.model_errors:
        for c in checks[start:]:
            if c.own_status == MAPPED:
                c.status = MODEL_REFUSED
                c.reason = "the compiler refuses the whole model: " + "; ".join(report.model_errors)
    else:
        cut = next((c.index for c in checks[start:] if c.own_status != MAPPED), None)
        if cut is not None:
            for c in checks[cut + 1 :]:
                if c.own_status == MAPPED:
                    c.status = AFTER_CUT
                    c.reason = f"after the cut at #{cut} {checks[cut].name}: the compiler maps one segment only"
    seen = set()
    for c in checks:
        if c.status == MAPPED and c.name not in seen:
            seen.add(c.name)
            if c.name == "RESHAPE":
                report.notes.append("RESHAPE: certain reshapes might not be mapped for large tensor sizes")
            if c.name.startswith("RESIZE_"):
                report.notes.append(
                    f"{c.name}: depending on input/output size, the compiler may keep it on the CPU (precision)"
                )
            if EDGETPU_OPS[c.name].since != "All":
                report.notes.append(f"{c.name} needs Edge TPU runtime {EDGETPU_OPS[c.name].since}")
    if len(graph.subgraphs) > 1:
        report.notes.append(
            f"the model has {len(graph.subgraphs)} subgraphs; only the main one is checked "
            "(control flow stays on the CPU)"
        )
    return report


# ------------------------------------------------------------------------------- formatting


def format_report(report: CompatReport) -> list[str]:
    """The human-readable lines of the Edge TPU section of ``edged inspect``."""
    lines: list[str] = []
    if report.compiled:
        lines.append(f"edge tpu: {report.verdict}")
    else:
        lines.append("edge tpu: not compiled; static compatibility check (edgetpu_compiler has the last word)")
        lines.append(f"verdict:  {report.verdict}")
    width = max([len("Operator"), *(len(n) for n, _, _ in report.table())]) + 2
    lines.append("")
    lines.append(f"  {'Operator':<{width}} {'Count':<10} Status")
    for name, count, status in report.table():
        lines.append(f"  {name:<{width}} {count:<10} {status}")
    lines.append("")
    if not report.compiled:
        lines.append(f"  Number of operations that will run on Edge TPU: {report.tpu_count}")
        lines.append(f"  Number of operations that will run on CPU: {report.cpu_count}")
        cut = report.first_unmapped
        if cut is not None:
            lines.append(f"  first operator left on the CPU (the cut): #{cut.index} {cut.name}: {cut.reason}")
        if report.after_cut:
            names = ", ".join(f"#{o.index} {o.name}" for o in report.after_cut[:8])
            more = f" and {len(report.after_cut) - 8} more" if len(report.after_cut) > 8 else ""
            lines.append(f"  after the cut, otherwise supported: {names}{more}")
        unsupported = [o for o in report.operators if o.own_status not in (MAPPED,) and o.status != INPUT_QUANTIZE]
        if unsupported:
            lines.append("  not supported:")
            for o in unsupported:
                lines.append(f"    #{o.index} {o.name}: {o.reason}")
    else:
        cpu = [o for o in report.operators if not o.mapped]
        lines.append(f"  Edge TPU segments ({EDGETPU_CUSTOM_OP}): {report.tpu_segments}")
        lines.append(f"  Number of operations that run on CPU: {len(cpu)}")
        for o in cpu:
            lines.append(f"    #{o.index} {o.name}")
    for note in report.notes:
        lines.append(f"  note: {note}")
    return lines
