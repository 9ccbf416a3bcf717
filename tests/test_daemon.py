"""``edged run`` for real: a subprocess with its HTTP listener, signals, sinks and metrics.

Each test starts ``python -m edged run`` and talks to it as an operator would
(HTTP, signals, the files it writes). Waits poll with a timeout; no long fixed sleeps.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from support.client import Samples, get, sample, scrape
from support.daemon import ROOT
from support.wait import wait_for

pytestmark = pytest.mark.system  # every test runs ``python -m edged run``

MODEL = "mobilenet_v2_1.0_224_quant.tflite"
STAGES = ("capture", "queue", "preprocess", "inference", "postprocess", "publish")
XNNPACK_BANNER = "INFO: Created TensorFlow Lite XNNPACK delegate"


# ---------------------------------------------------------------------------- helpers


def one_error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.startswith("edged: error:")]
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1, stderr
    return lines[0]


def make_video(path: Path, image: Path, size: tuple[int, int], frames: int, fps: float = 10.0) -> Path:
    import cv2

    img = cv2.resize(cv2.imread(str(image)), size, interpolation=cv2.INTER_AREA)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    assert writer.isOpened(), "OpenCV cannot write MJPG/AVI here"
    for _ in range(frames):
        writer.write(img)
    writer.release()
    assert path.stat().st_size > 0
    return path


@pytest.fixture(scope="module")
def cat_video(tmp_path_factory: pytest.TempPathFactory, images_dir: Path) -> Path:
    return make_video(tmp_path_factory.mktemp("video") / "cat.avi", images_dir / "cat_720p.jpg", (640, 480), 30)


def video_config(
    path: Path, video: Path, models_dir: Path, jsonl: Path, listen: str = "127.0.0.1:9110", realtime: bool = True
) -> Path:
    path.write_text(
        f"listen: {listen}\n"
        "streams:\n"
        "  - id: cat\n"
        f"    source: {{type: video, path: '{video}', realtime: {str(realtime).lower()}, loop: true}}\n"
        f"    model: {{path: '{models_dir / MODEL}', labels: '{models_dir / 'imagenet_labels.txt'}'}}\n"
        "    sinks:\n"
        "      - {type: log, interval: 0.5}\n"
        f"      - {{type: jsonl, path: '{jsonl}'}}\n"
    )
    return path


def metrics_consistent(m: Samples, stream: str) -> bool:
    """The invariants of one scrape (a scrape is not atomic: a frame may be mid-way)."""
    processed = sample(m, "edged_frames_total", stream=stream, outcome="processed")
    counts = [sample(m, "edged_stage_duration_seconds_count", stream=stream, stage=s) for s in STAGES[1:]]
    return (
        all(c == processed for c in counts)
        and sample(m, "edged_inferences_total", stream=stream, accelerator="cpu") == processed
        and sample(m, "edged_frame_latency_seconds_count", stream=stream) == processed
    )


# ---------------------------------------------------------------------------- the video daemon


@pytest.mark.parametrize("sig, run_seconds", [(signal.SIGTERM, 4.0), (signal.SIGINT, 2.0)], ids=["SIGTERM", "SIGINT"])
def test_video_stream_metrics_results_and_signal_shutdown(
    sig: int, run_seconds: float, daemons, tmp_path: Path, cat_video: Path, models_dir: Path, free_port: int
) -> None:
    jsonl = tmp_path / "results.jsonl"
    cfg = video_config(tmp_path / "edged.yaml", cat_video, models_dir, jsonl)
    d = daemons(tmp_path, cfg, listen=f"127.0.0.1:{free_port}")
    base = f"http://127.0.0.1:{free_port}"

    health = d.wait_healthy()
    assert health["status"] == "ok" and health["streams"] == {"cat": "running"}
    started = time.monotonic()
    assert get(base, "/no/such/path")[0] == 404
    assert get(base, "/metrics", method="POST")[0] == 405
    time.sleep(max(0.0, run_seconds - (time.monotonic() - started)))  # not synchronisation: run that long

    # a scrape can catch one frame between two counters: scrape again until one agrees (the
    # assertions below check the same equalities)
    def consistent() -> Samples | None:
        m = scrape(free_port)
        return m if metrics_consistent(m, "cat") else None

    m = wait_for(consistent, 0.5, "a scrape whose counters agree", interval=0.03)
    assert d.proc.poll() is None, d.stderr

    t0 = time.monotonic()
    rc = d.stop(sig)
    took = time.monotonic() - t0
    assert rc == 0, f"exit {rc} after {signal.Signals(sig).name}:\n{d.stderr[-3000:]}"
    assert took < 2.0, f"took {took:.2f}s to exit after {signal.Signals(sig).name}"
    assert "Traceback" not in d.stderr

    # --- metrics
    processed = sample(m, "edged_frames_total", stream="cat", outcome="processed")
    assert processed >= 5 * run_seconds / 2, f"only {processed} frames in {run_seconds}s at 10 fps"
    for stage in STAGES:
        sample(m, "edged_stage_duration_seconds_count", stream="cat", stage=stage)
        sample(m, "edged_stage_duration_seconds_sum", stream="cat", stage=stage)
        sample(m, "edged_stage_duration_seconds_bucket", stream="cat", stage=stage, le="+Inf")
    counts = {s: sample(m, "edged_stage_duration_seconds_count", stream="cat", stage=s) for s in STAGES}
    assert counts["preprocess"] == counts["inference"] == counts["postprocess"] == processed, counts
    assert counts["queue"] == counts["publish"] == processed, counts
    assert counts["capture"] >= processed, counts
    assert sample(m, "edged_inferences_total", stream="cat", accelerator="cpu") == processed
    assert sample(m, "edged_frame_latency_seconds_count", stream="cat") == processed
    # every captured frame was processed, dropped, or is still in the slot / in inference
    dropped = sample(m, "edged_frames_total", stream="cat", outcome="dropped")
    assert 0 <= counts["capture"] - processed - dropped <= 2, (counts, dropped)
    assert sample(m, "edged_stage_duration_seconds_sum", stream="cat", stage="inference") > 0

    sha = hashlib.sha256((models_dir / MODEL).read_bytes()).hexdigest()
    infos = [(dict(labels), v) for (name, labels), v in m.items() if name == "edged_model_info"]
    assert len(infos) == 1, infos
    labels, value = infos[0]
    assert value == 1
    assert labels["stream"] == "cat" and labels["sha256"] == sha and labels["task"] == "classification"
    assert labels["input_shape"] == "1x224x224x3" and labels["dtype"] == "uint8"

    # --- results file (read after shutdown: the last result may land after the scrape)
    lines = jsonl.read_text().splitlines()
    assert len(lines) >= processed
    assert len(lines) <= processed + 10 * (took + 1.0) + 2  # ~10 fps between scrape and exit, no more
    results = [json.loads(ln) for ln in lines]
    seqs = [r["seq"] for r in results]
    assert all(a < b for a, b in zip(seqs, seqs[1:])), "seq must strictly increase"
    for r in results:
        assert r["stream"] == "cat" and r["accelerator"] == "cpu" and r["task"] == "classification"
        assert r["frame"] == {"width": 640, "height": 480}
        assert r["classes"][0]["label"] == "Egyptian cat", r["classes"]
        assert r["classes"][0]["id"] == 286

    # --- the log sink: rate limited to one line per 0.5 s
    result_lines = [ln for ln in d.stderr.splitlines() if "edged.results" in ln]
    assert result_lines and all("Egyptian cat" in ln for ln in result_lines)
    assert len(result_lines) <= (run_seconds + took + 1.5) / 0.5 + 1


def test_video_stream_stops_cleanly_mid_decode(daemons, tmp_path: Path, images_dir: Path, models_dir: Path) -> None:
    """Shutdown while the capture thread is decoding a frame: no crash, no hang, exit 0.

    An unpaced (realtime: false) 2560x1440 MJPG video keeps the capture thread inside
    VideoCapture.read() almost all the time, so --duration stops the stream mid-decode.
    """
    video = make_video(tmp_path / "big.avi", images_dir / "cat_720p.jpg", (2560, 1440), 10)
    cfg = video_config(
        tmp_path / "edged.yaml", video, models_dir, tmp_path / "results.jsonl", listen="127.0.0.1:0", realtime=False
    )
    outcomes: list[Any] = []
    for i in range(2):
        logdir = tmp_path / f"run{i}"
        logdir.mkdir()
        d = daemons(logdir, cfg, ["--duration", 0.5], cwd=tmp_path)
        try:
            outcomes.append(d.wait(10))
        except subprocess.TimeoutExpired:
            outcomes.append("hung")
    assert outcomes == [0, 0], f"exit codes {outcomes} (-11 = SIGSEGV, -6 = SIGABRT)"


# ---------------------------------------------------------------------------- the embedded default


def test_embedded_default_demo_runs(daemons, tmp_path: Path, free_port: int) -> None:
    """No --config: the bundled digits detector on the synthetic scene of 1 to 4 digits; the log
    shows the boxes and the running precision and recall (models/digits_detector_int8.tflite must exist)."""
    assert (ROOT / "models" / "digits_detector_int8.tflite").is_file(), "the embedded demo model is missing"
    d = daemons(tmp_path, None, ["--duration", 4], listen=f"127.0.0.1:{free_port}")
    t0 = time.monotonic()
    rc = d.wait(30)
    err = d.stderr
    assert rc == 0, err
    assert time.monotonic() - t0 < 15
    assert "Traceback" not in err
    results = [ln for ln in err.splitlines() if "edged.results" in ln and "demo #" in ln]
    assert len(results) >= 2, err
    m = re.findall(
        r"demo #\d+ cpu: (\d+) objects?.*\| truth (\d) digits?, precision ([\d.]+)% recall ([\d.]+)% over (\d+) frames",
        err,
    )
    assert len(m) == len(results), err
    boxes = re.findall(r"demo #\d+ cpu: \d+ objects?: (\d) ([01]\.\d\d) at \((\d+),(\d+)\)-\((\d+),(\d+)\)", err)
    assert boxes, err
    precision, recall, frames = float(m[-1][2]), float(m[-1][3]), int(m[-1][4])
    assert frames >= 20 and precision >= 50.0 and recall >= 50.0, f"precision {precision}% recall {recall}%"
    assert "stopped" in err


# ---------------------------------------------------------------------------- log format, finite sources


def test_log_format_json(daemons, tmp_path: Path, images_dir: Path, models_dir: Path, free_port: int) -> None:
    cfg = tmp_path / "edged.yaml"
    cfg.write_text(
        "streams:\n"
        "  - id: stills\n"
        f"    source: {{type: images, path: '{images_dir / 'bird.bmp'}', fps: 10, loop: true}}\n"
        f"    model: {{path: '{models_dir / MODEL}', labels: '{models_dir / 'imagenet_labels.txt'}'}}\n"
        "    sinks: [{type: log, interval: 0}]\n"
    )
    d = daemons(tmp_path, cfg, ["--log-format", "json", "--duration", 1.5], listen=f"127.0.0.1:{free_port}")
    assert d.wait(20) == 0, d.stderr
    records = []
    for line in d.stderr.splitlines():
        if not line.startswith("{") and line.startswith(XNNPACK_BANNER):
            continue
        rec = json.loads(line)  # every other line is one JSON object
        assert isinstance(rec, dict)
        assert {"ts", "level", "logger", "msg"} <= set(rec), rec
        records.append(rec)
    results = [r for r in records if r["logger"] == "edged.results"]
    assert len(results) >= 3, records
    for r in results:
        res = r["result"]
        assert isinstance(res, dict)
        assert res["stream"] == "stills" and res["schema"] == 1 and res["accelerator"] == "cpu"
        assert res["classes"][0]["label"] == "chickadee"
    assert any(r["logger"] == "edged.service" and r["msg"] == "stopped" for r in records)


def test_images_directory_processed_once_then_exits(
    daemons, tmp_path: Path, images_dir: Path, models_dir: Path, free_port: int
) -> None:
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    expected = {
        "bird.bmp": "chickadee",
        "cat_720p.jpg": "Egyptian cat",
        "grace_hopper.bmp": "military uniform",
        "sunflower.bmp": "daisy",
    }
    for name in expected:
        shutil.copy(images_dir / name, pictures / name)
    (pictures / "notes.txt").write_text("not an image, not listed\n")
    jsonl = tmp_path / "results.jsonl"
    cfg = tmp_path / "edged.yaml"
    cfg.write_text(
        "streams:\n"
        "  - id: stills\n"
        "    source: {type: images, path: pictures, fps: 0, loop: false}\n"
        f"    model: {{path: '{models_dir / MODEL}', labels: '{models_dir / 'imagenet_labels.txt'}'}}\n"
        f"    sinks: [{{type: log, interval: 0}}, {{type: jsonl, path: '{jsonl}'}}]\n"
    )
    d = daemons(tmp_path, cfg, listen=f"127.0.0.1:{free_port}")
    rc = d.wait(20)  # exits by itself
    assert rc == 0, d.stderr
    assert "every stream has finished" in d.stderr
    results = [json.loads(ln) for ln in jsonl.read_text().splitlines()]
    got = {Path(r["source"]).name: r["classes"][0]["label"] for r in results}
    assert got == expected, f"each image exactly once: {[(r['seq'], r['source']) for r in results]}"
    assert len(results) == len(expected)
    assert sorted(r["seq"] for r in results) == list(range(len(expected)))


# ---------------------------------------------------------------------------- start-up errors


def test_listen_port_taken(daemons, tmp_path: Path, cat_video: Path, models_dir: Path) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen(1)
        port = blocker.getsockname()[1]
        cfg = video_config(
            tmp_path / "edged.yaml", cat_video, models_dir, tmp_path / "r.jsonl", listen=f"127.0.0.1:{port}"
        )
        d = daemons(tmp_path, cfg)
        rc = d.wait(20)
    err = d.stderr
    assert rc != 0
    line = one_error_line(err)
    assert f"127.0.0.1:{port}" in line and "listen" in line, line
    assert [ln for ln in err.splitlines() if not ln.startswith(XNNPACK_BANNER)] == [line], err


def test_missing_video_file(daemons, tmp_path: Path, models_dir: Path, free_port: int) -> None:
    missing = tmp_path / "no_such_clip.avi"
    cfg = video_config(tmp_path / "edged.yaml", missing, models_dir, tmp_path / "r.jsonl")
    d = daemons(tmp_path, cfg, listen=f"127.0.0.1:{free_port}")
    rc = d.wait(20)
    assert rc != 0
    line = one_error_line(d.stderr)
    assert str(missing) in line and "not found" in line, line
