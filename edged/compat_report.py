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
INPUT_QUANTIZE = "Runs on the CPU: quantizes the float input before the Edge TPU"
MODEL_REFUSED = "Operation is otherwise supported, but the compiler refuses the model"
COMPILED = "Compiled for the Edge TPU"
ON_CPU = "Runs on the CPU"


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
