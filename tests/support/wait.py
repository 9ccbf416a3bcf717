"""The one wait helper: poll a condition until it holds, or fail saying what was awaited."""

from __future__ import annotations

import time
from typing import Any, Callable


def wait_for(
    pred: Callable[[], Any], timeout: float, what: str | Callable[[], str] = "the condition", interval: float = 0.02
) -> Any:
    """Poll ``pred`` every ``interval`` s until it returns something truthy, and return that.

    ``pred`` is called at least once, and once more at the deadline; after that an
    AssertionError names ``what`` (a string, or a callable giving one, e.g. with the values seen).
    An AssertionError raised by ``pred`` (say, "the daemon exited early") ends the wait at once.
    """
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what() if callable(what) else what}")
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))
