"""A shim for the modules not yet moved to tests/support (test_mqtt.py): delete at merge."""

from support.client import scrape  # noqa: F401
from support.sinks import Collect  # noqa: F401
from support.wait import wait_for  # noqa: F401
