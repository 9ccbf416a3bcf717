"""One small error hierarchy. Every message names the file, key or device and what to do."""

from __future__ import annotations


class EdgedError(Exception):
    """Base of every error edged reports to a user (printed on one line, no traceback)."""

    exit_code = 1


class ConfigError(EdgedError):
    """A configuration file, command-line option or labels file is wrong."""

    exit_code = 2


class ModelError(EdgedError):
    """A model file is missing, corrupt, or not something edged can run."""

    exit_code = 2


class SourceError(EdgedError):
    """A frame source (camera, file, URL) cannot be opened or read."""


class AcceleratorError(EdgedError):
    """An accelerator (Edge TPU delegate) cannot be loaded or used."""


class WorkerFailure(AcceleratorError):
    """The Edge TPU worker could not answer; ``reason`` is one line, ``kind`` a metric label."""

    def __init__(self, reason: str, kind: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind = kind  # delegate | crash | hang | invoke | model
