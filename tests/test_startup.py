"""One-shot commands import only what they use: ``edged infer`` and ``edged inspect``, run as a user
runs them (``python -m edged``, a subprocess), import nothing of the daemon (its HTTP listener,
its metrics, its streams, the Edge TPU worker and its processes).

What a command imported is read from ``-X importtime`` (one stderr line per module). The tests
assert which modules are imported, not how long they take (bench/startup.py measures that).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# the daemon's parts: none is any use to a one-shot command
DAEMON_ONLY = (
    "prometheus_client",
    "http.server",
    "multiprocessing",
    "edged.worker",
    "edged.worker_child",
    "edged.stream",
    "edged.daemon",
    "edged.listener",
    "edged.metrics",
    "edged.api",
    "edged.sinks",
    "edged.demo",
    "edged.config",
)


def run_edged(*args: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run ``python -X importtime -m edged ARGS``; the process and the modules it imported."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "edged", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    modules = set()
    errors = []
    for line in proc.stderr.splitlines():
        if line.startswith("import time:"):
            name = line.rsplit("|", 1)[-1].strip()
            if name != "imported package":  # the header line
                modules.add(name)
        else:
            errors.append(line)
    proc.stderr = "\n".join(errors)
    return proc, modules


def daemon_parts(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == d or m.startswith(d + ".") for d in DAEMON_ONLY))


def test_the_import_list_is_read(models_dir: Path, images_dir: Path) -> None:
    """The check itself: a command that imports the daemon's parts shows them (edged config default)."""
    proc, modules = run_edged("config", "default")
    assert proc.returncode == 0, proc.stderr
    assert {"edged.cli", "edged.config", "edged.sources.camera"} <= modules
    assert "edged.config" in daemon_parts(modules)


@pytest.mark.parametrize(
    "model, extra",
    [
        ("mobilenet_v2_1.0_224_quant.tflite", ()),  # a CPU model: accelerator auto runs it in-process
        ("ssd_mobilenet_v1_coco_quant_postprocess.tflite", ("--labels", "coco_labels.txt")),
        ("mobilenet_v1_0.25_128_quant.tflite", ("--accelerator", "cpu")),  # an Edge TPU twin beside it, not used
    ],
)
def test_infer_imports_nothing_of_the_daemon(
    models_dir: Path, images_dir: Path, model: str, extra: tuple[str, ...]
) -> None:
    extra = tuple(str(models_dir / a) if a.endswith(".txt") else a for a in extra)
    proc, modules = run_edged("infer", "-m", str(models_dir / model), *extra, str(images_dir / "grace_hopper.bmp"))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["model"] == model and result["accelerator"] == "cpu"
    assert {"edged.cli", "edged.model_config", "edged.inference.local"} <= modules
    assert daemon_parts(modules) == []
    # an image file is read, no camera or network stream is opened
    assert not {"edged.sources.camera", "edged.sources.network", "edged.sources.video"} & modules


def test_infer_error_imports_nothing_of_the_daemon(models_dir: Path, images_dir: Path) -> None:
    proc, modules = run_edged(
        "infer", "-m", str(models_dir / "mobilenet_v2_1.0_224_quant.tflite"), "--top-k", "-1", str(images_dir)
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == "edged: error: --top-k: Input should be greater than or equal to 0"
    assert daemon_parts(modules) == []


@pytest.mark.parametrize("model", ["mobilenet_v2_1.0_224_quant.tflite", "mobilenet_v1_0.25_128_quant_edgetpu.tflite"])
@pytest.mark.parametrize("json_output", [False, True])
def test_inspect_imports_nothing_of_the_daemon(models_dir: Path, model: str, json_output: bool) -> None:
    proc, modules = run_edged("inspect", str(models_dir / model), *(["--json"] if json_output else []))
    assert proc.returncode == 0, proc.stderr
    if json_output:
        assert json.loads(proc.stdout)["name"] == model
    else:
        assert model in proc.stdout
    assert "edged.compat" in modules
    assert daemon_parts(modules) == []
    assert "pydantic" not in modules and "cv2" not in modules  # a model file is read, no image, no configuration
