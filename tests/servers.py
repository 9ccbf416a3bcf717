"""A shim for the modules not yet moved to tests/support (test_mqtt.py): delete at merge."""

from support.client import free_port  # noqa: F401
from support.servers import MjpegServer, RtspServer, apt_packages, frame_number, numbered_frame  # noqa: F401
