"""How long outages and loads last: short by default, long with ``pytest --long`` (or EDGED_LONG_TESTS=1).

A test module reads its durations at import, e.g. ``OUTAGE_SECONDS = duration(4.0, 30.0)``;
conftest.py sets :data:`LONG` from the command line before the modules are collected.
"""

from __future__ import annotations

import os

LONG = os.environ.get("EDGED_LONG_TESTS") == "1"


def duration(short: float, long: float) -> float:
    """``long`` when the long runs were asked for, else ``short`` (seconds)."""
    return long if LONG else short
