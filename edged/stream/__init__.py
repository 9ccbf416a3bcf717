"""A stream: its states, the latest-frame slot, the Stream with its two threads, its results."""

from __future__ import annotations

from .results import build_result
from .slot import LatestSlot, ReadyFrame
from .state import Phase, SourceState, StreamState, phase
from .stream import Stream

__all__ = ["LatestSlot", "Phase", "ReadyFrame", "SourceState", "Stream", "StreamState", "build_result", "phase"]
