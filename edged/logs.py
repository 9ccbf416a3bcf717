"""Logging set-up: human lines by default, one JSON object a line with --log-format json.

Both go to stderr. When stderr is the journal (``JOURNAL_STREAM`` names stderr's device and
inode, as systemd sets it) and journald's native socket is there, records go to that socket as
journal fields instead (:mod:`.journal`: MESSAGE, PRIORITY, ``EDGED_STREAM`` ... from
``extra=``), the stderr line being the fallback. A line on the journal's stderr starts with its
syslog priority, ``<3>`` error, ``<4>`` warning, ``<6>`` info, ``<7>`` debug (each line of a
traceback too), so ``journalctl -p warning`` shows edged's warnings and errors; the human format
then leaves out the timestamp, which the journal adds itself.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any, Optional, TextIO

# a record's own attributes; every other one came with ``extra=`` (a stream, a stage, an accelerator)
STANDARD_ATTRS = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in STANDARD_ATTRS and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


# syslog priorities (sd-daemon.h's SD_ERR ... SD_DEBUG) by logging level
PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}


def priority(levelno: int) -> int:
    """The syslog priority of a logging level (a level between two takes the lower one's)."""
    return PRIORITY[max((lv for lv in PRIORITY if lv <= levelno), default=logging.DEBUG)]


class Fields(logging.LoggerAdapter):
    """A logger whose records carry ``fields`` (``stream=...``) as extras, merged with a call's own
    ``extra=``: JSON keys with --log-format json, ``EDGED_STREAM`` ... fields in the journal."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        kwargs["extra"] = {**(self.extra or {}), **kwargs.get("extra", {})}
        return msg, kwargs


class JournalPrefix(logging.Formatter):
    """Another formatter's text with the record's syslog priority before each of its lines."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{priority(record.levelno)}>"
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
    """Log to ``stream`` (stderr); when it is the journal and journald's native socket is there,
    through that socket instead, each record's fields as journal fields (:mod:`.journal`)."""
    stream = stream or sys.stderr
    handler: logging.Handler = logging.StreamHandler(stream)
    journal = stderr_is_journal(stream)
    formatter: logging.Formatter
    if fmt == "json":
        formatter = JsonFormatter()
    elif journal or os.environ.get("JOURNAL_STREAM"):
        formatter = logging.Formatter("%(levelname)s %(name)s: %(message)s")
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler.setFormatter(JournalPrefix(formatter) if journal else formatter)
    if journal:
        from .journal import JournalHandler, socket_path

        path = socket_path()
        if path is not None:  # the stderr line stays, as the fallback of a record journald cannot take
            handler = JournalHandler(path, handler)
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))
