"""One function builds a :class:`~edged.result.Result` from a frame and its inference."""

from __future__ import annotations

import time
from typing import Optional

from ..inference import Output
from ..model import ModelInfo
from ..result import Result
from ..sources import Frame


def build_result(stream: str, frame: Frame, out: Output, info: ModelInfo, queued: Optional[float] = None) -> Result:
    """The result of ``frame``: what the model found and the milliseconds of each stage.

    ``queued`` is the time the prepared frame waited for the inference thread (a stream's
    frames); a one-shot inference (``edged infer``) has no queue. ``total`` runs from the
    start of the frame's capture to now.
    """
    h, w = frame.image.shape[:2]
    latency = {"capture": frame.capture_seconds * 1e3}
    if queued is not None:
        latency["queue"] = queued * 1e3
    latency.update({k: v * 1e3 for k, v in out.timings.items()})
    latency["total"] = (time.monotonic() - frame.monotonic) * 1e3
    return Result(
        stream=stream,
        seq=frame.seq,
        timestamp=frame.timestamp,
        model=info.name,
        accelerator=out.accelerator,
        task=info.task,
        frame_width=w,
        frame_height=h,
        classes=out.classes,
        objects=out.objects,
        source=frame.origin,
        annotations=frame.annotations,
        latency_ms=latency,
    )
