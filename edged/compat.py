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

The operator rules are in :mod:`edged.compat_rules`, the report and its text in
:mod:`edged.compat_report`; this module reads the file, places the cut, and is the one
name the rest of edged imports (``from edged import compat``).
"""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path
from typing import Any

from . import tflite_schema
from .compat_report import (
    AFTER_CUT,
    CERTAIN,
    COMPILED,
    DATA_TYPE,
    DYNAMIC,
    INPUT_QUANTIZE,
    LIKELY,
    LIMITATION,
    MAPPED,
    MODEL_REFUSED,
    NOT_CONSTANT,
    NOT_SUPPORTED,
    ON_CPU,
    RANK,
    UNKNOWN,
    CompatReport,
    OpCheck,
    format_report,
)
from .compat_rules import EIGHT_BIT, SIZE_FROM_PARAM, check_op, is_prologue_op, op_name
from .edgetpu_ops import EDGETPU_OPS
from .errors import ModelError
from .model import EDGETPU_CUSTOM_OP, read_tflite_bytes

__all__ = [
    "AFTER_CUT",
    "CERTAIN",
    "COMPILED",
    "DATA_TYPE",
    "DYNAMIC",
    "EDGETPU_CUSTOM_OP",
    "INPUT_QUANTIZE",
    "LIKELY",
    "LIMITATION",
    "MAPPED",
    "MODEL_REFUSED",
    "NOT_CONSTANT",
    "NOT_SUPPORTED",
    "ON_CPU",
    "RANK",
    "UNKNOWN",
    "CompatReport",
    "OpCheck",
    "analyse",
    "file_facts",
    "format_report",
    "inspect_file",
    "op_name",
    "operator_counts",
    "read_model_file",
    "tensor_dict",
]


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


def inspect_file(path: str | Path, multiple_subgraphs: bool = False) -> tuple[bytes, tflite_schema.Graph, CompatReport]:
    """Read and check a model; a corrupt file is a one-line ModelError whichever part of it is broken.
    ``multiple_subgraphs``: as ``edgetpu_compiler -a`` (several Edge TPU segments around CPU operators)."""
    data, graph = read_model_file(path)
    try:
        report = analyse(graph, multiple_subgraphs)
    except (ValueError, struct.error, IndexError) as exc:
        raise ModelError(f"{path} is corrupt or truncated ({exc}); copy the model again") from None
    return data, graph, report


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


# ---------------------------------------------------------------------------------- the cut


def analyse(graph: tflite_schema.Graph, multiple_subgraphs: bool = False) -> CompatReport:
    sg = graph.subgraphs[0]
    checks = [check_op(graph, sg, op) for op in sg.operators]
    compiled = any(c.status == COMPILED for c in checks)
    report = CompatReport(compiled=compiled, operators=checks, multiple_subgraphs=multiple_subgraphs)
    if compiled:
        return _compiled(report, checks)
    _whole_model(sg, checks, report)
    _place(sg, checks, report, multiple_subgraphs)
    _notes(graph, checks, report)
    return report


def _compiled(report: CompatReport, checks: list[OpCheck]) -> CompatReport:
    """A model edgetpu_compiler compiled: its segments, and the operators left on the CPU."""
    report.tpu_segments = sum(c.status == COMPILED for c in checks)
    for c in checks:
        if c.status != COMPILED:
            c.status = ON_CPU
            c.reason = None
    report.notes.append(
        "edgetpu_compiler replaced the mapped operators by its custom op: their number is not recorded in the file"
    )
    return report


def _whole_model(sg: tflite_schema.Subgraph, checks: list[OpCheck], report: CompatReport) -> None:
    """The whole-model conditions under which the compiler refuses to compile at all."""
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


def _place(sg: tflite_schema.Subgraph, checks: list[OpCheck], report: CompatReport, multiple: bool) -> None:
    """The compiler's segmentation, as its compiled models show it: the CPU prologue, then one Edge TPU
    segment made of every operator that maps and reads only graph inputs, the prologue's outputs,
    constants and the outputs of operators in the segment; the rest runs on the CPU. ``multiple``
    (``-a``): every operator that maps does, in as many segments as the CPU operators split them into."""
    producer = {t: k for k, op in enumerate(sg.operators) for t in op.outputs}
    prologue = _prologue(sg, checks)
    if report.model_errors:
        for c in checks:
            if c.own_status == MAPPED and c.index not in prologue:
                c.status = MODEL_REFUSED
                c.reason = "the compiler refuses the whole model: " + "; ".join(report.model_errors)
        return
    for k, op in enumerate(sg.operators):
        c = checks[k]
        if k in prologue or c.own_status != MAPPED or multiple:
            continue
        on_cpu = [producer[t] for t in op.inputs if t in producer and not checks[producer[t]].mapped]
        on_cpu = [p for p in on_cpu if p not in prologue]
        if on_cpu:
            first = checks[min(on_cpu)]
            c.status = AFTER_CUT
            c.reason = (
                f"reads the output of #{first.index} {first.name}, which runs on the CPU: the compiler maps one "
                "Edge TPU segment (edgetpu_compiler -a would start another)"
            )
    found = _segments(sg, checks, producer)
    report.tpu_segments = found if multiple else min(found, 1)  # one custom op holds them all without -a


def _segments(sg: tflite_schema.Subgraph, checks: list[OpCheck], producer: dict[int, int]) -> int:
    """How many Edge TPU segments the mapped operators make: groups joined by the tensors they pass."""
    group = {k: k for k, c in enumerate(checks) if c.mapped}

    def root(k: int) -> int:
        while group[k] != k:
            group[k] = group[group[k]]
            k = group[k]
        return k

    for k in group:
        for t in sg.operators[k].inputs:
            if t in producer and producer[t] in group:
                group[root(k)] = root(producer[t])
    return len({root(k) for k in group})


def _prologue(sg: tflite_schema.Subgraph, checks: list[OpCheck]) -> set[int]:
    """The operators before the Edge TPU that convert the model's input (a float QUANTIZE, a CAST of a
    uint8 input to float, ...): edgetpu_compiler leaves them to the CPU and starts its segment after them."""
    ready = set(sg.inputs)
    found: set[int] = set()
    for k, op in enumerate(sg.operators):
        c = checks[k]
        if not is_prologue_op(sg, op, c.name, c.own_status == MAPPED, ready):
            continue
        found.add(k)
        ready.update(op.outputs)
        c.status = INPUT_QUANTIZE
        c.reason = f"{c.name} of the model input, before the Edge TPU: edgetpu_compiler leaves it to the CPU"
    return found


def _notes(graph: tflite_schema.Graph, checks: list[OpCheck], report: CompatReport) -> None:
    """What a static check cannot decide about the operators that map."""
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
            if not EDGETPU_OPS[c.name].listed:
                report.notes.append(
                    f"{c.name} is not in Coral's table of supported operations; edgetpu_compiler 16 maps it"
                )
            if EDGETPU_OPS[c.name].since != "All":
                report.notes.append(f"{c.name} needs Edge TPU runtime {EDGETPU_OPS[c.name].since}")
    if len(graph.subgraphs) > 1:
        report.notes.append(
            f"the model has {len(graph.subgraphs)} subgraphs; only the main one is checked "
            "(control flow stays on the CPU)"
        )
