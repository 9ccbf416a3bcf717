"""Which TFLite interpreter to use.

Three Python packages expose the same ``Interpreter`` API:

* ``ai_edge_litert`` (LiteRT, the maintained successor; numpy 2) — the default: on the
  CPU it is several times faster than the others (XNNPACK);
* ``tflite_runtime`` (the classic runtime of the Coral stack, numpy<2) — the one Coral's
  ``libedgetpu`` and ``pycoral`` are built against;
* ``tensorflow.lite`` — when full TensorFlow is installed.

``auto`` takes the first importable one in that order. ``EDGED_RUNTIME`` in the
environment overrides ``auto`` (used by CI to run the suite under each runtime).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Callable

from .errors import ConfigError

RUNTIMES = ("ai_edge_litert", "tflite_runtime", "tensorflow")
_MODULES = {
    "ai_edge_litert": "ai_edge_litert.interpreter",
    "tflite_runtime": "tflite_runtime.interpreter",
    "tensorflow": "tensorflow.lite",
}


@dataclass(frozen=True)
class Runtime:
    name: str
    version: str
    interpreter_class: Callable[..., Any]
    load_delegate: Callable[..., Any] | None


def _import(name: str) -> Runtime:
    module = importlib.import_module(_MODULES[name])
    if name == "tensorflow":
        tf = importlib.import_module("tensorflow")
        return Runtime(name, tf.__version__, module.Interpreter, module.experimental.load_delegate)
    top = importlib.import_module(name)
    version = getattr(top, "__version__", "") or _dist_version(name)
    return Runtime(name, version, module.Interpreter, getattr(module, "load_delegate", None))


def _dist_version(name: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(name.replace("_", "-"))
    except metadata.PackageNotFoundError:
        return ""


def available() -> list[str]:
    """The runtimes importable here, in order of preference."""
    found = []
    for name in RUNTIMES:
        try:
            importlib.import_module(_MODULES[name])
        except Exception:  # ImportError, or a broken install (e.g. numpy ABI mismatch)
            continue
        found.append(name)
    return found


_cache: dict[str, Runtime] = {}


def get_runtime(name: str = "auto") -> Runtime:
    """Return the runtime called ``name`` (or the preferred one for ``auto``)."""
    if name == "auto":
        name = os.environ.get("EDGED_RUNTIME", "auto") or "auto"
    if name in _cache:
        return _cache[name]
    if name == "auto":
        errors = []
        for candidate in RUNTIMES:
            try:
                rt = _import(candidate)
            except Exception as exc:
                errors.append(f"{candidate}: {exc}")
                continue
            _cache["auto"] = rt
            return rt
        raise ConfigError(
            "no TFLite runtime is installed: pip install ai-edge-litert "
            "(or tflite-runtime, the Coral stack's runtime); tried " + "; ".join(errors)
        )
    if name not in RUNTIMES:
        raise ConfigError(f"unknown runtime {name!r}: choose auto, {', '.join(RUNTIMES)}")
    try:
        rt = _import(name)
    except Exception as exc:
        raise ConfigError(f"runtime {name!r} cannot be imported ({exc}); install it or use runtime: auto") from exc
    _cache[name] = rt
    return rt


_BANNERS = (b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.",)


@contextlib.contextmanager
def native_banners_silenced() -> Iterator[None]:
    """Drop the TFLite C++ runtime's start-up banner ("INFO: Created TensorFlow Lite XNNPACK
    delegate for CPU.") that it writes straight to file descriptor 2, so that a user's
    error stays one line. Everything else the native code writes meanwhile is passed on."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable fd 2 (e.g. embedded): nothing to silence
        yield
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            kept = [ln for ln in tmp.read().splitlines(keepends=True) if ln.strip() not in _BANNERS]
            if kept:
                os.write(2, b"".join(kept))
