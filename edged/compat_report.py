"""The Edge TPU compatibility report: each operator's status, the verdict, and its text.

:mod:`edged.compat` builds it (the operator rules are in :mod:`edged.compat_rules`);
``edged inspect`` prints :func:`format_report` and ``--json`` its :meth:`CompatReport.to_dict`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .model import EDGETPU_CUSTOM_OP

# The compiler's own status strings where it has one; ours where it says "unspecified".
MAPPED = "Mapped to Edge TPU"
NOT_SUPPORTED = "Operation not supported"
DATA_TYPE = "Operation is working on an unsupported data type"
RANK = "Tensor has unsupported rank (up to 3 innermost dimensions mapped)"
NOT_CONSTANT = "Filter, bias, or other param is not constant at compile-time"
LIMITATION = "Operation is otherwise supported, but not mapped due to a known limitation"
DYNAMIC = "Dynamic-sized tensors are not supported"
AFTER_CUT = "More than one subgraph is not supported"
INPUT_QUANTIZE = "Runs on the CPU: converts the model input before the Edge TPU"
MODEL_REFUSED = "Operation is otherwise supported, but the compiler refuses the model"
COMPILED = "Compiled for the Edge TPU"
ON_CPU = "Runs on the CPU"

# How sure a verdict is: from the operator table and its documented limits; from the compiler's
# observed behaviour (Coral's compiled models); or not decidable statically (limits the compiler
# does not publish: "unspecified limitation", tensor sizes)
CERTAIN, LIKELY, UNKNOWN = "certain", "likely", "unknown"


@dataclass
class OpCheck:
    index: int  # position in execution order
    name: str  # BuiltinOperator name, or the custom operator's name
    custom: bool
    status: str
    reason: str | None = None  # one line, for every operator that does not map
    own_status: str = MAPPED  # what the operator alone would get, before the cut
    confidence: str = CERTAIN  # CERTAIN, LIKELY or UNKNOWN

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
            "confidence": self.confidence,
        }


@dataclass
class CompatReport:
    compiled: bool
    operators: list[OpCheck]  # the main subgraph, in execution order
    model_errors: list[str] = field(default_factory=list)  # the compiler would refuse the whole model
    notes: list[str] = field(default_factory=list)  # what a static check cannot decide
    tpu_segments: int = 0  # edgetpu-custom-op instances (compiled), or the segments the mapped operators make
    multiple_subgraphs: bool = False  # checked as edgetpu_compiler -a would compile it

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
        later = sum(not o.mapped for o in self.operators[cut.index + 1 :])
        if self.multiple_subgraphs:
            return (
                f"{self.tpu_count} of {n} operators would map to the Edge TPU in {self.tpu_segments} segment(s) "
                f"(-a); {self.cpu_count} run on the CPU, the first #{cut.index} {cut.name}"
            )
        if not rest:
            tail = "the last operator, on the CPU"
        elif not later:
            tail = f"only it runs on the CPU: the {rest} operator(s) after it do not depend on it"
        elif later == rest:
            tail = f"it and the {rest} operator(s) after it run on the CPU"
        else:
            tail = f"it and {later} of the {rest} operator(s) after it run on the CPU (the rest do not depend on it)"
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
            "tpu_segments": self.tpu_segments,
            "verdict": self.verdict,
            # a compiled model does not record how many operators its Edge TPU segments hold
            "operations_on_edgetpu": None if self.compiled else self.tpu_count,
            "operations_on_cpu": self.cpu_count,
            "first_unmapped": None if cut is None else {"index": cut.index, "operator": cut.name, "reason": cut.reason},
            "after_cut_otherwise_supported": [{"index": o.index, "operator": o.name} for o in self.after_cut],
            "model_errors": self.model_errors,
            "notes": self.notes,
            "table": [{"operator": n, "count": c, "status": s} for n, c, s in self.table()],
            "uncertain": [
                {"index": o.index, "operator": o.name, "confidence": o.confidence}
                for o in self.operators
                if o.confidence != CERTAIN
            ],
            "operators": [o.to_dict() for o in self.operators],
        }


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
        lines.append(f"  Edge TPU segments: {report.tpu_segments}")
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
                sure = "" if o.confidence == CERTAIN else f" ({o.confidence})"
                lines.append(f"    #{o.index} {o.name}: {o.reason}{sure}")
        unsure = [o for o in report.operators if o.confidence != CERTAIN and o.mapped]
        if unsure:
            names = ", ".join(f"#{o.index} {o.name} ({o.confidence})" for o in unsure[:8])
            more = f" and {len(unsure) - 8} more" if len(unsure) > 8 else ""
            lines.append(f"  mapped, less than certain: {names}{more}")
    else:
        cpu = [o for o in report.operators if not o.mapped]
        lines.append(f"  Edge TPU segments ({EDGETPU_CUSTOM_OP}): {report.tpu_segments}")
        lines.append(f"  Number of operations that run on CPU: {len(cpu)}")
        for o in cpu:
            lines.append(f"    #{o.index} {o.name}")
    for note in report.notes:
        lines.append(f"  note: {note}")
    return lines
