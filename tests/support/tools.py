"""Programs from Debian packages the tests run: skipped without them, failed with EDGED_REQUIRE_TOOLS=1."""

from __future__ import annotations

import os
import shutil

import pytest


def find_tool(name: str) -> str | None:
    """On PATH, else in /usr/bin or /usr/sbin (Debian's daemons, mosquitto, are in /usr/sbin: not on every PATH)."""
    return shutil.which(name) or next(
        (path for folder in ("/usr/bin", "/usr/sbin") if os.path.exists(path := f"{folder}/{name}")), None
    )


def require_tool(name: str, package: str = "prometheus") -> str:
    """The path of a program of Debian's ``package``; skip without it, fail with EDGED_REQUIRE_TOOLS=1."""
    path = find_tool(name)
    if path is None:
        if os.environ.get("EDGED_REQUIRE_TOOLS") == "1":
            pytest.fail(f"{name} is not installed (apt-get install {package}) and EDGED_REQUIRE_TOOLS=1")
        pytest.skip(f"{name} not installed (apt-get install {package})")
    return path
