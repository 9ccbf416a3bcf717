"""Daemon configurations more than one test module runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from support.daemon import ROOT

TOKEN = "s3cret-token-for-the-tests-0123"  # an API token (EDGED_API_TOKEN) of the right length


def two_streams(testdata: Path, listen: str, device: str, demo_fps: float, det_fps: float) -> dict[str, Any]:
    """A classifier on the demo's synthetic digits ("demo") and the SSD on a testdata image ("det")."""
    return {
        "device": device,
        "listen": listen,
        "streams": [
            {
                "id": "demo",
                "source": {"type": "synthetic", "fps": demo_fps},
                "model": {
                    "path": str(ROOT / "models/digits_int8.tflite"),
                    "labels": str(ROOT / "models/digits_labels.txt"),
                },
                "sinks": [],
            },
            {
                "id": "det",
                "source": {"type": "images", "path": str(testdata / "images/kite_and_cold.jpg"), "fps": det_fps},
                "model": {
                    "path": str(testdata / "models/ssd_mobilenet_v1_coco_quant_postprocess.tflite"),
                    "labels": str(testdata / "models/coco_labels.txt"),
                },
                "sinks": [],
            },
        ],
    }
