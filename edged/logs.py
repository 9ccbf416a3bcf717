"""Logging set-up: human lines by default, one JSON object a line with --log-format json.

Both go to stderr, which journald keeps. When stderr is the journal (``JOURNAL_STREAM`` names
stderr's device and inode, as systemd sets it) every line starts with its syslog priority,
``<3>`` error, ``<4>`` warning, ``<6>`` info, ``<7>`` debug (each line of a traceback too), so
``journalctl -p warning`` shows edged's warnings and errors; the human format then leaves out
the timestamp, which the journal adds itself.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any, Optional, TextIO

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


# syslog priorities (sd-daemon.h's SD_ERR ... SD_DEBUG) by logging level
PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}


class JournalPrefix(logging.Formatter):
    """Another formatter's text with the record's syslog priority before each of its lines."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        level = max((lv for lv in PRIORITY if lv <= record.levelno), default=logging.DEBUG)
        prefix = f"<{PRIORITY[level]}>"
        return prefix + self.inner.format(record).replace("\n", "\n" + prefix)


def stderr_is_journal(stream: Optional[TextIO] = None) -> bool:
    """Whether ``stream`` (stderr) is the journal's stream: ``JOURNAL_STREAM`` is its ``device:inode``."""
    value = os.environ.get("JOURNAL_STREAM", "")
    dev, sep, ino = value.partition(":")
    if not sep or not dev.isdigit() or not ino.isdigit():
        return False
    try:
        st = os.fstat((stream or sys.stderr).fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


def setup_logging(level: str = "info", fmt: str = "human", stream: Optional[TextIO] = None) -> None:
    stream = stream or sys.stderr
    handler = logging.StreamHandler(stream)
    journal = stderr_is_journal(stream)
    formatter: logging.Formatter
    if fmt == "json":
        formatter = JsonFormatter()
    elif journal or os.environ.get("JOURNAL_STREAM"):
        formatter = logging.Formatter("%(levelname)s %(name)s: %(message)s")
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler.setFormatter(JournalPrefix(formatter) if journal else formatter)
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))
