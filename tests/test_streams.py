"""Several streams in one daemon: a shared engine taken in turn; live sources that come back."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.wait import wait_for

from edged.config import config_from_dict
from edged.daemon import Service
from edged.errors import ConfigError
from edged.inference.shared import FairLock, SharedEngine
from edged.sources.base import redact


@pytest.mark.system  # a Service: its listener
def test_streams_naming_one_model_share_one_engine_fairly(models_dir: Path, images_dir: Path, free_port: int) -> None:
    ssd = {
        "path": str(models_dir / "ssd_mobilenet_v1_coco_quant_postprocess.tflite"),
        "labels": str(models_dir / "coco_labels.txt"),
        "threads": 2,
    }
    fast = {"fps": 200, "loop": True}  # more frames than the model can take: both always have one ready
    cfg = config_from_dict(
        {
            "listen": f"127.0.0.1:{free_port}",
            "models": {"ssd": ssd},
            "streams": [
                {
                    "id": "a",
                    "source": {"type": "images", "path": str(images_dir / "grace_hopper.bmp"), **fast},
                    "model": "ssd",
                    "sinks": [],
                },
                {
                    "id": "b",
                    "source": {"type": "images", "path": str(images_dir / "kite_and_cold.jpg"), **fast},
                    "model": "ssd",
                    "sinks": [],
                },
                {
                    "id": "c",
                    "source": {"type": "images", "path": str(images_dir / "traffic"), **fast},
                    "model": {**ssd},
                    "sinks": [],
                },  # its own engine
            ],
        }
    )
    svc = Service(cfg)
    svc.start()
    a, b, c = svc.streams
    try:  # until both sharers have had 20 turns (tflite-runtime's SSD is ~8x slower than LiteRT's)
        wait_for(
            lambda: a.metrics.processed >= 20 and b.metrics.processed >= 20,
            60,
            lambda: f"20 turns of each sharer (a {a.metrics.processed}, b {b.metrics.processed})",
            interval=0.1,
        )
    finally:
        svc.close()
    assert a.engine is b.engine and isinstance(a.engine, SharedEngine)
    assert c.engine is not a.engine and not isinstance(c.engine, SharedEngine)
    # the shared interpreter was taken in turn: neither sharer starved
    assert a.metrics.processed >= 20 and b.metrics.processed >= 20
    assert abs(a.metrics.processed - b.metrics.processed) <= 0.2 * max(a.metrics.processed, b.metrics.processed) + 2, (
        a.metrics.processed,
        b.metrics.processed,
    )
    # and each stream got its own answers through the shared model
    assert a.latest and {o.label for o in a.latest.objects or []} >= {"person"}
    assert b.latest and "kite" in {o.label for o in b.latest.objects or []}


def test_unknown_shared_model_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="no model named 'ssd' under models:"):
        config_from_dict({"streams": [{"id": "a", "source": {"type": "synthetic"}, "model": "ssd"}]}, "edged.yaml")


def test_fair_lock_grants_in_arrival_order() -> None:
    import threading

    lock, order = FairLock(), []
    lock.__enter__()  # held (ticket 0): the threads below queue up in a known order
    threads = []
    for i in range(5):
        t = threading.Thread(target=lambda i=i: (lock.__enter__(), order.append(i), lock.__exit__()))
        t.start()
        threads.append(t)
        # thread i has drawn its ticket (i + 1) before the next one starts
        wait_for(lambda i=i: lock._next == i + 2, 5, f"thread {i} to queue")
    lock.__exit__()
    for t in threads:
        t.join(5)
    assert order == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(
    "url,shown",
    [
        ("rtsp://admin:s3cret@10.0.0.5:554/live", "rtsp://***@10.0.0.5:554/live"),
        ("http://user@cam.local/mjpg", "http://***@cam.local/mjpg"),
        ("rtsp://cam.local/live", "rtsp://cam.local/live"),
        ("rtsp://a:b@c/x?token=1 and http://d:e@f/", "rtsp://***@c/x?token=1 and http://***@f/"),
    ],
)
def test_credentials_are_redacted(url: str, shown: str) -> None:
    assert redact(url) == shown
