"""A scene the test directs: digits drawn where a control file says, for a camera child process.

``staged_frame(control, i)`` (a module-level function: an MJPEG camera of
:mod:`support.servers` pickles a partial of it) reads the JSON file ``control`` — a list of
``{"label": "3", "x": 40, "y": 300, "size": 120}`` — and draws each digit (a held-out
handwritten glyph of that label, as the demo scene draws them) over the demo scene's
background, frame ``i`` of it. An empty list is an empty scene. The test moves a digit into
a zone and out of it by rewriting the file.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from edged.demo.scene import MultiDigitScene, load_digits

WIDTH, HEIGHT = 640, 480


@lru_cache(maxsize=1)
def _scene() -> MultiDigitScene:
    return MultiDigitScene(width=WIDTH, height=HEIGHT, seed=7, hold_frames=1_000_000)


@lru_cache(maxsize=64)
def _glyph(label: str, size: int) -> np.ndarray:
    images, labels = load_digits()
    j = int(np.nonzero(labels == int(label))[0][0])
    small = np.clip(images[j].astype(np.float32)[..., None] * (1.15 / 16.0), 0.0, 1.0)
    small = np.rint(small * np.array([255.0, 230.0, 200.0], np.float32)).astype(np.uint8)
    return cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC)


def place(control: Path, digits: list[dict]) -> None:
    """Direct the scene: ``digits`` from the next frame on (written atomically)."""
    tmp = control.with_suffix(".tmp")
    tmp.write_text(json.dumps(digits))
    tmp.replace(control)


def staged_frame(control: str, i: int) -> np.ndarray:
    try:
        digits = json.loads(Path(control).read_text())
    except (OSError, ValueError):
        digits = []
    out = _scene()._background(i, None).copy()
    for d in digits:
        size = int(d["size"])
        x, y = int(d["x"]), int(d["y"])
        roi = out[y : y + size, x : x + size]
        np.maximum(roi, _glyph(str(d["label"]), size), out=roi)
    return out


# a zone over the frame's lower left quarter: IN_ZONE's digit stands in it, OUT_OF_ZONE's not
DOOR = {"door": {"coordinates": [[0, 0.5], [0.5, 0.5], [0.5, 1], [0, 1]]}}
IN_ZONE = {"label": "3", "x": 60, "y": 300, "size": 130}  # bottom centre (125, 430)
OUT_OF_ZONE = {"label": "3", "x": 420, "y": 40, "size": 130}  # bottom centre (485, 170)


def staged_camera(tmp: Path, fps: float = 10):
    """An MJPEG camera (started) drawing what ``tmp/scene.json`` says (empty at first), and that file."""
    from functools import partial

    from support.servers import MjpegServer

    control = tmp / "scene.json"
    place(control, [])
    camera = MjpegServer(None, fps=fps, frame=partial(staged_frame, str(control)))
    camera.start()
    return camera, control


def staged_stream(sid: str, camera_url: str, broker_port: int, queue: Path, zones: bool = True, **objects) -> dict:
    """A stream of the bundled digits detector on the staged camera, tracking 3s and 7s (``objects``:
    more of its ``objects:`` keys), with the door zone and one mqtt sink."""
    from support.daemon import ROOT

    models = ROOT / "models"
    stream = {
        "id": sid,
        "source": {"type": "url", "url": camera_url},
        "model": {"path": str(models / "digits_detector_int8.tflite"), "labels": str(models / "digits_labels.txt")},
        "objects": {"track": ["3", "7"], **objects},
        "sinks": [{"type": "mqtt", "port": broker_port, "queue_path": str(queue), "status_interval": 2}],
    }
    if zones:
        stream["zones"] = DOOR
    return stream
