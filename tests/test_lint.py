"""The code base stays ruff clean (the project's convention), checked with the project's settings."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.system  # ruff in a subprocess


ROOT = Path(__file__).resolve().parent.parent


def test_ruff_clean() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--output-format", "concise", "edged", "tests", "bench", "models"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
