"""The doctor's checks of the software: the TF Lite runtimes, libedgetpu and a real delegate load.

* **runtime**: the Python runtimes installed (ai-edge-litert, tflite-runtime, tensorflow; Coral's
  pycoral), which one edged uses in-process and which one in the Edge TPU worker.
* **libedgetpu**: where the delegate library is found and its ``edgetpu_version()``, read in a
  short-lived subprocess (a library can abort at load: never in the doctor's own process), with
  the runtime it is paired with in the worker (the known-good pairs: docs/edgetpu.md §3).
* **delegate**: for each Edge TPU, the delegate loaded and a test inference run in an Edge TPU
  worker process (:class:`~edged.worker.DeviceWorker`) with a deadline; an abort (libedgetpu's
  ``LOG(FATAL)``) or a hang of the worker is a finding, never the doctor's end.
"""

from __future__ import annotations

import ctypes.util
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Union

from ..edgetpu import EdgeTpu, default_library, list_edge_tpus
from ..errors import EdgedError, WorkerFailure
from .findings import INFO, OK, PROBLEM, WARNING, Finding
from .hardware import identity_finding

if TYPE_CHECKING:
    from ..worker import DeviceWorker

DISTRIBUTIONS = ("ai-edge-litert", "tflite-runtime", "tensorflow")
PROBE_SECONDS = 10.0  # the library probe: a load that takes longer is a finding
INSTALL = (
    "install libedgetpu1-std from Coral's apt repository (https://coral.ai/software/#debian-packages), or a "
    "feranick/libedgetpu build that matches the TF Lite runtime (docs/edgetpu.md §2 and §3)"
)
PAIRING = "docs/edgetpu.md §3 lists the runtime and libedgetpu pairs known to work"

_PROBE = r"""
import ctypes, json, os, sys
class Info(ctypes.Structure):
    _fields_ = [("fname", ctypes.c_char_p), ("fbase", ctypes.c_void_p),
                ("sname", ctypes.c_char_p), ("saddr", ctypes.c_void_p)]
out = {"loaded": False}
try:
    lib = ctypes.CDLL(sys.argv[1])
except OSError as exc:
    out["error"] = str(exc)
else:
    out["loaded"] = True
    for sym in ("edgetpu_version", "tflite_plugin_create_delegate"):
        try:
            fn = getattr(lib, sym)
        except AttributeError:
            continue
        info = Info()
        if ctypes.CDLL(None).dladdr(ctypes.cast(fn, ctypes.c_void_p), ctypes.byref(info)) and info.fname:
            out["path"] = os.path.realpath(info.fname.decode())
            break
    try:
        fn = lib.edgetpu_version
    except AttributeError:
        out["version"] = None
    else:
        fn.restype, fn.argtypes = ctypes.c_char_p, []
        out["version"] = (fn() or b"").decode("utf-8", "replace")
print(json.dumps(out), flush=True)
"""


# --------------------------------------------------------------------------- runtimes


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _pycoral() -> tuple[str | None, str | None]:
    """(Coral's pycoral version or None, a note when PyPI's unrelated "pycoral" is installed instead).

    ``pycoral.utils.edgetpu`` is found, not imported: Coral's loads libedgetpu, which can abort."""
    version = _version("pycoral")
    try:
        coral = importlib.util.find_spec("pycoral.utils.edgetpu") is not None
    except (ImportError, ValueError):
        coral = False
    if coral:
        return version or "?", None
    if version is not None:
        return None, (
            f"the 'pycoral' {version} installed is not Coral's (it has no pycoral.utils.edgetpu: PyPI's pycoral "
            "is an unrelated package; Coral's comes from its apt repository, python3-pycoral) -- edged does not need it"
        )
    return None, None


def worker_runtime(name: str = "auto") -> tuple[str, str] | None:
    """(name, version) of the runtime the Edge TPU worker uses (placement's choice), None without one."""
    from ..inference.placement import delegate_runtime
    from ..runtime import get_runtime

    try:
        rt = get_runtime(delegate_runtime(name))
    except EdgedError:
        return None
    return rt.name, rt.version


def runtime_findings(name: str = "auto") -> list[Finding]:
    """The "runtime" check: what is installed, what edged uses in-process and in the Edge TPU worker."""
    from ..runtime import get_runtime

    installed = {d: v for d in DISTRIBUTIONS if (v := _version(d)) is not None}
    coral, note = _pycoral()
    if coral is not None:
        installed["pycoral (Coral's)"] = coral
    listed = ", ".join(f"{d} {v}" for d, v in installed.items()) or "none"
    details: dict[str, object] = {"installed": installed}
    try:
        rt = get_runtime(name)
    except EdgedError as exc:
        remedy = "pip install ai-edge-litert (or tflite-runtime, the runtime of Coral's stack)"
        return [Finding("runtime", PROBLEM, f"no usable TF Lite runtime ({exc}); installed: {listed}", remedy)]
    worker = worker_runtime(name)
    details.update(uses=rt.name, uses_version=rt.version, worker=worker and worker[0])
    text = f"installed: {listed}; edged uses {rt.name} {rt.version}"
    if worker is not None and worker[0] != rt.name:
        text += f" (the Edge TPU worker {worker[0]} {worker[1]}: libedgetpu is built against it)"
    if note:
        text += f"; {note}"
    return [Finding("runtime", OK, text, details=details)]


# --------------------------------------------------------------------------- libedgetpu


@dataclass(frozen=True)
class Library:
    """What the probe found of the delegate library."""

    name: str  # what is loaded: the --library path, find_library's name or the default name
    how: str  # "--library", "ctypes.util.find_library", "the default name"
    loaded: bool
    path: str | None = None  # the file the loader resolved it to
    version: str | None = None  # edgetpu_version(), None when it has no such function
    error: str | None = None

    @property
    def runtime_version(self) -> int | None:
        m = re.search(r"RuntimeVersion\((\d+)\)", self.version or "")
        return int(m.group(1)) if m else None


def probe_library(library: str | None = None, timeout: float = PROBE_SECONDS) -> Library:
    """Load ``library`` (default: find_library("edgetpu"), else the platform's name) in a subprocess."""
    if library:
        name, how = library, "--library"
    elif (found := ctypes.util.find_library("edgetpu")) is not None:
        name, how = found, "ctypes.util.find_library"
    else:
        name, how = default_library(), "the default name"
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _PROBE, name], capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return Library(name, how, False, error=f"loading it gave no answer within {timeout:g} s")
    if proc.returncode < 0:
        sig = signal.Signals(-proc.returncode).name if -proc.returncode in signal.valid_signals() else proc.returncode
        return Library(name, how, False, error=f"the process loading it was killed by {sig}")
    try:
        out = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return Library(name, how, False, error=f"the probe failed: {proc.stderr.strip()[-300:] or proc.returncode}")
    return Library(name, how, out["loaded"], out.get("path"), out.get("version"), out.get("error"))


def library_finding(lib: Library, needed: bool, runtime: str = "auto") -> Finding:
    """The "libedgetpu" check; ``needed``: an Edge TPU is present or a configured stream wants one."""
    details = {"name": lib.name, "found_by": lib.how, "path": lib.path, "version": lib.version}
    if not lib.loaded:
        details["error"] = lib.error
        status = PROBLEM if needed else WARNING
        why = "" if needed else " (no Edge TPU needs it now)"
        return Finding("libedgetpu", status, f"{lib.name} cannot be loaded: {lib.error}{why}", INSTALL, details=details)
    worker = worker_runtime(runtime)
    details.update(runtime=worker and worker[0], runtime_version=worker and worker[1])
    details["libedgetpu_runtime_version"] = lib.runtime_version
    where = f"{lib.name} ({lib.how}) at {lib.path or '?'}"
    pair = f"{worker[0]} {worker[1]}" if worker else "no TF Lite runtime"
    if lib.version is None:
        text = f"{where} has no edgetpu_version(): is it libedgetpu? (paired with {pair} in the worker)"
        return Finding(
            "libedgetpu", WARNING, text, f"point --library (edgetpu.library) at libedgetpu; {INSTALL}", details=details
        )
    text = f"{where}: {lib.version}; paired with {pair} in the Edge TPU worker ({PAIRING})"
    return Finding("libedgetpu", OK, text, details=details)


# --------------------------------------------------------------------------- delegate tests


def demo_model() -> Path:
    """The bundled demo model (CPU-only: no edgetpu-custom-op)."""
    from ..config import builtin_model_dir

    return builtin_model_dir() / "digits_int8.tflite"


def is_compiled(path: Path) -> bool:
    """Whether the model holds an edgetpu-custom-op (read from the file, nothing loaded)."""
    from .. import compat

    try:
        return bool(compat.inspect_file(path)[2].compiled)
    except EdgedError:
        return False


def _start(worker: DeviceWorker, deadline: float) -> tuple[Optional[EdgedError], bool]:
    """Start ``worker`` in a thread; past ``deadline`` its child is killed. (the failure, timed out)."""
    failure: list[Optional[EdgedError]] = [None]

    def run() -> None:
        try:
            worker.start()
        except EdgedError as exc:
            failure[0] = exc
        except Exception as exc:  # not edged's own failure (spawn, a broken install): said, never taken for ok
            failure[0] = WorkerFailure(f"the worker could not start: {type(exc).__name__}: {exc}", "crash")

    thread = threading.Thread(target=run, name=f"doctor-{worker.label}", daemon=True)
    thread.start()
    thread.join(deadline)
    timed_out = thread.is_alive()
    while thread.is_alive():  # the child is wedged (SIGSTOP, a stuck transfer): kill it, start() then fails
        pid = worker.pid
        if pid is not None:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        thread.join(0.5)
    return failure[0], timed_out


def _failed(selector: str, exc: EdgedError, timed_out: bool, deadline: float, details: dict) -> Finding:
    """A failed delegate test, classified: no answer, an abort, a death, a load failure, a model failure."""
    reason = exc.reason if isinstance(exc, WorkerFailure) else str(exc)
    kind = exc.kind if isinstance(exc, WorkerFailure) else "runtime"
    details.update(reason=reason, kind="hang" if timed_out else kind)
    if timed_out or kind == "hang":
        text = (
            f"no answer within {deadline:g} s from the worker loading the delegate and running the test inference"
            if timed_out
            else f"no answer from the worker loading the delegate and running the test inference: {reason}"
        )
        remedy = "a wedged USB transfer or a hung TPU: unplug and replug it (PCIe: reboot), then run the doctor again"
    elif kind == "runtime":
        text, remedy = f"no delegate test: {reason}", "see the runtime check"
    elif kind == "crash" and "SIGABRT" in reason:
        text = f"the worker aborted (SIGABRT: libedgetpu's LOG(FATAL)) during the delegate load or test: {reason}"
        remedy = (
            "usually the USB TPU reset or lost power: `dmesg | tail` for usb resets; a powered hub or a port "
            "with 900 mA, its own cable; then replug it"
        )
    elif kind == "crash":
        text = f"the worker died during the delegate load or test inference: {reason}"
        remedy = "`dmesg | tail` (a segfault: a libedgetpu that does not match the runtime; see the libedgetpu check)"
    elif kind == "delegate" and "not found" in reason:
        text, remedy = reason, INSTALL
    elif kind == "delegate":
        text = f"the delegate did not load: {reason.removeprefix('delegate did not load: ')}"
        remedy = (
            "no permission on the device node (see the device-node check), the TPU unplugged or held by another "
            f"process, or a libedgetpu built for another TF Lite version than the runtime ({PAIRING})"
        )
    else:
        text = f"the test model did not run with the delegate: {reason}"
        remedy = f"a libedgetpu built for another TF Lite version than the runtime, or a broken model ({PAIRING})"
    return Finding("delegate", PROBLEM, text, remedy, tpu=selector, details=details)


def delegate_test(selector: str, library: str, runtime: str, deadline: float, model: Path | None = None) -> Finding:
    """One delegate load and test inference on ``selector`` in an Edge TPU worker, within ``deadline`` s."""
    from ..worker import DeviceWorker

    path = model or demo_model()
    compiled = is_compiled(path)
    details: dict[str, object] = {"library": library, "model": str(path), "compiled": compiled, "deadline": deadline}
    # probes far off: the doctor closes the worker after the one start
    worker = DeviceWorker(
        selector,
        selector,
        library,
        runtime=runtime,
        deadline=min(deadline, 60.0),
        probe_initial=3600.0,
        probe_max=3600.0,
    )
    worker.register("doctor", str(path))
    try:
        exc, timed_out = _start(worker, deadline)
        if exc is not None or timed_out:
            return _failed(selector, exc or WorkerFailure("no answer", "hang"), timed_out, deadline, details)
        first = worker.models["doctor"].first_inference_seconds or 0.0
        details.update(first_inference_ms=round(first * 1000, 1), runtime=worker.runtime_version)
    finally:
        worker.close()
    text = f"delegate loaded ({library}) and the test inference of {path.name} ran in {first * 1000:.1f} ms"
    if compiled:
        text += " on the Edge TPU (the model is compiled for it)"
    else:
        text += (
            " -- the model is CPU-only (no edgetpu-custom-op): this proves the delegate loads and opens the "
            "device with the runtime, not the TPU's execution (--config with an _edgetpu model tests that)"
        )
    return Finding("delegate", OK, text, tpu=selector, details=details)


def delegate_findings(
    tpus: Sequence[Union[EdgeTpu, str]],
    library: str,
    runtime: str,
    deadline: float,
    model: Union[Path, Mapping[str, Path], None] = None,
    sysfs_root: Optional[Path] = None,
    dev_root: Optional[Path] = None,
) -> list[Finding]:
    """A delegate test per TPU (an :class:`EdgeTpu` found, or a selector forced with ``--device``);
    ``model``: one for all, or the model per selector (the configuration's), default the demo model.
    After a test on a USB TPU, its enumeration state again (still 1a6e:089a: the firmware did not take)."""
    if not tpus:
        text = (
            "no test inference was run: no Edge TPU is present (the delegate library was still checked: "
            "see libedgetpu); `edged doctor --device usb:0` forces one"
        )
        return [Finding("delegate", INFO, text)]
    out = []
    for tpu in tpus:
        selector = tpu if isinstance(tpu, str) else tpu.selector
        path = model.get(selector) if isinstance(model, Mapping) else model
        out.append(delegate_test(selector, library, runtime, deadline, path))
        if isinstance(tpu, EdgeTpu) and tpu.type == "usb":
            now = list_edge_tpus(sysfs_root, dev_root, use_pycoral=False)
            again = next((t for t in now if t.selector == selector), None)
            if again is None:
                out.append(
                    Finding(
                        "usb-state",
                        WARNING,
                        "gone after the delegate load (no longer enumerated)",
                        "check `dmesg | tail` for a USB disconnect; replug it",
                        tpu=selector,
                    )
                )
            elif (found := identity_finding(again, after_load=True)) is not None:
                out.append(found)
    return out
