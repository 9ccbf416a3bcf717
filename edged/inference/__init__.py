"""Running a model on a frame: the engine interface and its implementations.

* :mod:`.types` — the :class:`InferenceEngine` protocol every engine implements, the
  :class:`Prepared` input, the :class:`Output` of one inference, the engine's status.
* :mod:`.decode` — the model's outputs to classes or objects; the decoder is chosen once,
  when the model loads.
* :mod:`.local` — :class:`Engine`: a model run through one backend (an interpreter in this
  process, or a model in an Edge TPU worker process).
* :mod:`.failover` — :class:`FailoverEngine`: the Edge TPU with its CPU twin.
* :mod:`.shared` — :class:`SharedEngine`: one engine that several streams use in turn.
* :mod:`.placement` — where each stream's model runs (a pure plan), then the engines.
"""

from __future__ import annotations

from .local import Engine
from .types import EngineStatus, InferenceEngine, InputSignature, Output, PendingOutput, Prepared, Preparer

__all__ = [
    "Engine", "EngineStatus", "InferenceEngine", "InputSignature", "Output", "PendingOutput", "Prepared", "Preparer",
]  # fmt: skip
