"""What ``edged doctor`` (and the daemon's continuous checks) find: one :class:`Finding` per check.

A finding is one line a person reads -- what was checked and what was found -- with, when it is
not ok, what to do. ``--json`` prints the same records. The exit status of ``edged doctor`` is
0 when nothing is a problem, 1 when something is (a warning alone does not fail it).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

OK, INFO, WARNING, PROBLEM = "ok", "info", "warning", "problem"
STATUSES = (OK, INFO, WARNING, PROBLEM)
_MARKS = {OK: "ok", INFO: "--", WARNING: "WARN", PROBLEM: "FAIL"}


@dataclass(frozen=True)
class Finding:
    """One check's result.

    ``check`` is a stable id (``usb-link``, ``device-node``, ``temperature``, ...; the metric label
    and the JSON key), ``tpu`` the Edge TPU it is about (``usb:0``, ``pci:1``) or None for the
    board, ``message`` what was found, ``remedy`` what to do (None when ok), ``details`` the
    measured values behind it (for ``--json`` and the metrics).
    """

    check: str
    status: str
    message: str
    remedy: str | None = None
    tpu: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"unknown status {self.status!r}")

    @property
    def ok(self) -> bool:
        return self.status in (OK, INFO)

    def line(self) -> str:
        """The human line: ``[WARN] usb-link usb:0: ... -> what to do``."""
        head = f"[{_MARKS[self.status]:>4}] {self.check}" + (f" {self.tpu}" if self.tpu else "")
        text = f"{head}: {self.message}"
        return f"{text}\n       -> {self.remedy}" if self.remedy else text

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def worst(findings: Iterable[Finding]) -> str:
    """The most serious status among ``findings`` (ok for none)."""
    rank = {OK: 0, INFO: 0, WARNING: 1, PROBLEM: 2}
    return max((f.status for f in findings), key=rank.__getitem__, default=OK)


def render_text(findings: list[Finding]) -> str:
    counts = {s: sum(f.status == s for f in findings) for s in (PROBLEM, WARNING)}
    lines = [f.line() for f in findings]
    lines.append(
        f"{len(findings)} checks: {counts[PROBLEM]} problem{'s' * (counts[PROBLEM] != 1)}, "
        f"{counts[WARNING]} warning{'s' * (counts[WARNING] != 1)}"
    )
    return "\n".join(lines)


def render_json(findings: list[Finding]) -> str:
    return json.dumps({"status": worst(findings), "findings": [f.to_dict() for f in findings]}, indent=2)


def exit_code(findings: list[Finding]) -> int:
    return 1 if worst(findings) == PROBLEM else 0
