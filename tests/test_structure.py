"""The structure rules (tests/structure.py) hold, and the checker sees what it should."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import structure

ROOT = Path(__file__).resolve().parent.parent


def test_structure_rules_hold() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "structure.py")], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, "structure violations (see tests/structure.py):\n" + proc.stdout + proc.stderr


def test_checker_finds_each_kind(tmp_path: Path) -> None:
    pkg = tmp_path / "edged" / "sinks"
    pkg.mkdir(parents=True)
    body = "\n".join(f"    x = {i}" for i in range(60))
    (pkg / "demo.py").write_text(
        "import importlib\n"
        "import logging\n"
        "from typing import Any\n\n\n"
        "class Sink:\n"
        "    LEVEL = 1\n\n\n"
        f"def long(sink: Any, n: int, *args: Any) -> None:\n{body}\n\n\n"
        "def duck(sink: 'Sink', name: str) -> object:\n"
        "    getattr(logging, name.upper())  # a module: fine\n"
        "    getattr(importlib.import_module(name), 'x')  # a module: fine\n"
        "    getattr(Sink, 'LEVEL')  # a class constant: fine\n"
        "    return getattr(sink, 'close', None) or hasattr(sink, 'start')\n" + "\n" * 400
    )
    keys = {v.key for v in structure.violations(tmp_path)}
    assert keys == {
        "edged/sinks/demo.py:long-module",
        "edged/sinks/demo.py:long-function long",
        "edged/sinks/demo.py:any-param long(sink)",
        "edged/sinks/demo.py:getattr duck: getattr(sink, 'close', None)",
        "edged/sinks/demo.py:hasattr duck: hasattr(sink, 'start')",
    }
    allow = {"edged/sinks/demo.py:long-module", "edged/sinks/demo.py:long-function gone"}
    legitimate = {"edged/sinks/demo.py:hasattr duck: hasattr(sink, 'start')": "a reason", "edged/x.py:gone": "?"}
    lines = structure.report(tmp_path, allow, legitimate)
    assert len(lines) == 5 and not any(line.startswith("edged/sinks/demo.py:long-module ") for line in lines)
    assert not any(line.startswith("edged/sinks/demo.py:hasattr") for line in lines)
    assert lines[-2].startswith("edged/sinks/demo.py:long-function gone  (stale entry in tests/structure_allow.txt")
    assert lines[-1].startswith("edged/x.py:gone  (stale entry in LEGITIMATE")


def test_every_package_of_edged_is_installed() -> None:
    """A package under edged/ that pyproject.toml does not list is missing from the installed daemon."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11 and later
    root = Path(__file__).resolve().parent.parent
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(root).parts) for p in (root / "edged").rglob("__init__.py")} | {
        "edged.models"
    }
    assert found == listed, f"not listed: {sorted(found - listed)}; listed, not there: {sorted(listed - found)}"
