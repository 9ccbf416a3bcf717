"""Shared fixtures. The reference data is found through EDGED_TESTDATA or ../shared/testdata.

Where it is absent, the tests that need it skip with a reason; with
EDGED_REQUIRE_TESTDATA=1 (set by .ci/run) its absence fails the whole run instead.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _find_testdata() -> Path | None:
    env = os.environ.get("EDGED_TESTDATA")
    candidates = [Path(env)] if env else [ROOT.parent / "shared" / "testdata", ROOT / ".." / "shared" / "testdata"]
    for c in candidates:
        if (c / "models").is_dir() and (c / "images").is_dir():
            return c.resolve()
    return None


TESTDATA = _find_testdata()


def pytest_sessionstart(session: pytest.Session) -> None:
    if TESTDATA is None and os.environ.get("EDGED_REQUIRE_TESTDATA") == "1":
        raise pytest.UsageError(
            "reference test data not found (set EDGED_TESTDATA or provide ../shared/testdata); "
            "EDGED_REQUIRE_TESTDATA=1 makes its absence a failure"
        )


@pytest.fixture(scope="session")
def testdata() -> Path:
    if TESTDATA is None:
        pytest.skip("reference test data not found: set EDGED_TESTDATA or provide ../shared/testdata")
    return TESTDATA


@pytest.fixture(scope="session")
def models_dir(testdata: Path) -> Path:
    return testdata / "models"


@pytest.fixture(scope="session")
def images_dir(testdata: Path) -> Path:
    return testdata / "images"


@pytest.fixture
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
