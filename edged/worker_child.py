"""The Edge TPU worker's child process (:mod:`edged.worker` supervises it).

It serves one request at a time from the pipe: ``("load", key, path, library, options,
threads)`` loads a model with the delegate, ``("attach", key, input block, output block)``
maps its shared memory, ``("infer", key)`` invokes it, ``("quit",)`` ends. Each reply is
``("ok", ...)`` or ``("err", reason, kind)``; it never dies on a request.
"""

from __future__ import annotations

import signal
import time
from multiprocessing import shared_memory
from typing import Any

import numpy as np

from .errors import EdgedError, WorkerFailure


def _load_delegate(runtime: Any, library: str, options: dict[str, str]) -> Any:
    import ctypes

    try:  # check the library itself first: a missing one is the usual case, and is worth saying so
        ctypes.CDLL(library)
    except OSError as exc:
        detail = str(exc).replace(f"{library}: ", "")
        raise WorkerFailure(f"delegate library not found: {library} ({detail})", "delegate") from None
    if runtime.load_delegate is None:
        raise WorkerFailure(f"the {runtime.name} runtime cannot load external delegates", "delegate")
    try:
        return runtime.load_delegate(library, options)
    except (ValueError, OSError) as exc:
        raise WorkerFailure(f"delegate did not load: {_one_line(exc)}", "delegate") from None


def child_main(conn: Any, runtime_name: str) -> None:
    """The worker's main loop: load / attach / infer / quit requests, one at a time."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when the worker stops
    from .runtime import get_runtime

    runtime = get_runtime(runtime_name)
    models: dict[str, dict[str, Any]] = {}
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        op = msg[0]
        try:
            if op == "quit":
                conn.send(("ok",))
                return
            if op == "load":
                conn.send(_load(msg, runtime, runtime_name, models))
            elif op == "attach":
                conn.send(_attach(msg, models))
            elif op == "infer":
                conn.send(_infer(msg, models))
            else:
                conn.send(("err", f"unknown request {op!r}", "invoke"))
        except WorkerFailure as exc:
            conn.send(("err", exc.reason, exc.kind))
        except Exception as exc:  # never die on a request: say what went wrong instead
            conn.send(("err", f"{op} failed: {type(exc).__name__}: {_one_line(exc)}", "model"))


def _load(msg: tuple[Any, ...], runtime: Any, runtime_name: str, models: dict[str, dict[str, Any]]) -> tuple[Any, ...]:
    """``("load", key, path, library, options, threads)``: the model with the delegate -> its info."""
    from .model import load_model

    _, key, path, library, options, threads = msg
    delegate = _load_delegate(runtime, library, options)
    try:
        loaded = load_model(path, runtime_name, threads, delegates=[delegate])
    except EdgedError as exc:
        raise WorkerFailure(str(exc), "model") from None
    models[key] = {"loaded": loaded, "delegate": delegate}
    return ("ok", loaded.info, runtime.version)


def _attach(msg: tuple[Any, ...], models: dict[str, dict[str, Any]]) -> tuple[Any, ...]:
    """``("attach", key, input block, output block)``: the shared memory the model reads and writes."""
    _, key, in_name, out_name = msg
    m = models[key]
    # the parent owns the blocks and unlinks them; spawned children share its resource
    # tracker, so attaching here adds no second registration to undo
    m["shm"] = [shared_memory.SharedMemory(name=in_name), shared_memory.SharedMemory(name=out_name)]
    info = m["loaded"].info
    m["input"] = np.ndarray(info.input.shape, dtype=np.dtype(info.input.dtype), buffer=m["shm"][0].buf)
    interp = m["loaded"].interpreter
    m["tensor"] = interp.tensor(info.input.index)
    m["outputs"] = [
        (interp.tensor(t.index), view) for t, view in zip(info.outputs, output_views(info, m["shm"][1].buf))
    ]
    return ("ok",)


def _infer(msg: tuple[Any, ...], models: dict[str, dict[str, Any]]) -> tuple[Any, ...]:
    """``("infer", key)``: invoke on what the input block holds -> the invoke time in seconds."""
    m = models[msg[1]]
    interp = m["loaded"].interpreter
    view = m["tensor"]()
    np.copyto(view, m["input"])
    del view
    t0 = time.perf_counter()
    try:
        interp.invoke()
    except Exception as exc:
        raise WorkerFailure(f"invoke failed: {_one_line(exc)}", "invoke") from None
    seconds = time.perf_counter() - t0
    for tensor, view in m["outputs"]:  # outputs go back through shared memory too
        np.copyto(view, tensor())
    return ("ok", seconds)


def output_views(info: Any, buf: Any) -> list[np.ndarray]:
    """Arrays for each output tensor, laid out one after another (8-byte aligned) in ``buf``."""
    views, offset = [], 0
    for t in info.outputs:
        views.append(np.ndarray(t.shape, dtype=np.dtype(t.dtype), buffer=buf, offset=offset))
        offset += _slot(t)
    return views


def outputs_size(info: Any) -> int:
    """The bytes of the output block (at least 8: a block is never empty)."""
    return sum(_slot(t) for t in info.outputs) or 8


def _slot(t: Any) -> int:
    """The bytes an output tensor takes in the block: its size rounded up to 8."""
    return -(-int(np.prod(t.shape)) * np.dtype(t.dtype).itemsize // 8) * 8


def _one_line(exc: BaseException) -> str:
    """An error's text on one line (a reply's reason is one line)."""
    return " ".join(str(exc).split())
