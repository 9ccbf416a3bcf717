"""The Edge TPU worker's child process (:mod:`edged.worker` supervises it).

It serves the requests of the pipe in order: ``("load", key, path, library, options,
threads)`` loads a model with the delegate, ``("attach", key, [(input block, output block),
...])`` maps the model's shared-memory slots, ``("infer", id, key, slot)`` invokes it on the
slot's input and writes its outputs into the slot's output block, ``("quit",)`` ends. The
parent sends the next ``infer`` before this one is answered, so it is already waiting in the
pipe when an invoke ends: the Edge TPU idles only for a reply, a read and one input copy.
Each reply is ``("ok", ...)`` (``("ok", id, invoke seconds)`` for an infer) or ``("err",
reason, kind, id)``; it never dies on a request.

With ``EDGED_EMULATE_EDGETPU`` set (benchmarks and tests: :mod:`edged.emulation`), a model
that has a recording takes its recorded time per invoke and replays its recorded outputs.
"""

from __future__ import annotations

import os
import queue
import signal
import sys
import threading
import time
from multiprocessing import shared_memory
from typing import Any

import numpy as np

from .errors import EdgedError, WorkerFailure


def check_library(library: str) -> None:
    """WorkerFailure (kind ``delegate``) when the delegate library cannot be loaded at all."""
    import ctypes

    try:
        ctypes.CDLL(library)
    except OSError as exc:
        detail = str(exc).replace(f"{library}: ", "")
        raise WorkerFailure(f"delegate library not found: {library} ({detail})", "delegate") from None


def _load_delegate(runtime: Any, library: str, options: dict[str, str]) -> Any:
    check_library(library)  # first: a missing one is the usual case, and is worth saying so
    if runtime.load_delegate is None:
        raise WorkerFailure(f"the {runtime.name} runtime cannot load external delegates", "delegate")
    try:
        return runtime.load_delegate(library, options)
    except (ValueError, OSError) as exc:
        raise WorkerFailure(f"delegate did not load: {_one_line(exc)}", "delegate") from None


def child_main(conn: Any, runtime_name: str) -> None:
    """The worker's main loop: load / attach / infer / quit requests, in order. Requests are
    read and replies sent by threads of their own, so between two invokes this thread only
    takes the next request and copies its input (an invoke releases the GIL: the reading and
    sending happen meanwhile)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when the worker stops
    sys.setswitchinterval(0.001)  # the invoking thread gets the GIL back quickly from the other two
    from .runtime import get_runtime

    runtime = get_runtime(runtime_name)
    models: dict[str, dict[str, Any]] = {}
    inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
    replies: queue.SimpleQueue[Any] = queue.SimpleQueue()
    sender = threading.Thread(target=_send_replies, args=(conn, replies), name="replies", daemon=True)
    sender.start()
    threading.Thread(target=_read_requests, args=(conn, inbox), name="requests", daemon=True).start()
    try:
        while _serve(inbox.get(), replies, runtime, runtime_name, models):
            pass
    finally:
        replies.put(None)
        sender.join(2.0)


def _read_requests(conn: Any, inbox: queue.SimpleQueue[Any]) -> None:
    """The reading thread; it never ends silently: the parent gone, or a request that cannot be
    read (said on stderr, which the daemon's log gets), and the child ends."""
    while True:
        try:
            inbox.put(conn.recv())
        except (EOFError, OSError):
            inbox.put(None)  # the parent is gone: the child ends
            return
        except Exception as exc:
            print(
                f"edged worker: a request cannot be read ({type(exc).__name__}: {_one_line(exc)}); the worker ends",
                file=sys.stderr,
            )
            inbox.put(None)  # the parent sees the worker exit and fails what is in flight
            return


def _send_replies(conn: Any, replies: queue.SimpleQueue[Any]) -> None:
    """The sending thread; a reply that cannot be sent ends the child at once (said on stderr):
    the parent sees it exit and fails what is in flight, rather than waiting for a deadline."""
    while True:
        reply = replies.get()
        if reply is None:
            return
        try:
            conn.send(reply)
        except (BrokenPipeError, OSError):
            return  # the parent is gone: the reading thread ends the child
        except Exception as exc:
            print(
                f"edged worker: a reply cannot be sent ({type(exc).__name__}: {_one_line(exc)}); the worker ends",
                file=sys.stderr,
            )
            sys.stderr.flush()
            os._exit(1)


def _serve(msg: Any, replies: queue.SimpleQueue[Any], runtime: Any, runtime_name: str,
           models: dict[str, dict[str, Any]]) -> bool:  # fmt: skip
    """One request (None: the parent is gone); False when the child ends."""
    if msg is None:
        return False
    op = msg[0]
    try:
        if op == "quit":
            replies.put(("ok",))
            return False
        if op == "infer":
            replies.put(_infer(msg, models))
        elif op == "load":
            replies.put(_load(msg, runtime, runtime_name, models))
        elif op == "attach":
            replies.put(_attach(msg, models))
        else:
            replies.put(("err", f"unknown request {op!r}", "invoke"))
    except WorkerFailure as exc:
        replies.put(("err", exc.reason, exc.kind, _request_id(msg)))
    except Exception as exc:  # never die on a request: say what went wrong instead
        replies.put(("err", f"{op} failed: {type(exc).__name__}: {_one_line(exc)}", "model", _request_id(msg)))
    return True


def _request_id(msg: tuple[Any, ...]) -> Any:
    return msg[1] if msg[0] == "infer" and len(msg) > 1 else None


def _load(msg: tuple[Any, ...], runtime: Any, runtime_name: str, models: dict[str, dict[str, Any]]) -> tuple[Any, ...]:
    """``("load", key, path, library, options, threads)``: the model with the delegate -> its info."""
    from .model import load_model

    _, key, path, library, options, threads = msg
    delegate = _load_delegate(runtime, library, options)
    try:
        loaded = load_model(path, runtime_name, threads, delegates=[delegate])
    except EdgedError as exc:
        raise WorkerFailure(str(exc), "model") from None
    from .emulation import for_model

    models[key] = {"loaded": loaded, "delegate": delegate, "emulated": for_model(path)}
    return ("ok", loaded.info, runtime.version)


def _attach(msg: tuple[Any, ...], models: dict[str, dict[str, Any]]) -> tuple[Any, ...]:
    """``("attach", key, [(input block, output block), ...])``: the shared-memory slots of a model."""
    _, key, blocks = msg
    m = models[key]
    # the parent owns the blocks and unlinks them; spawned children share its resource
    # tracker, so attaching here adds no second registration to undo
    info = m["loaded"].info
    interp = m["loaded"].interpreter
    m["tensor"] = interp.tensor(info.input.index)
    m["shm"], m["slots"] = [], []
    for in_name, out_name in blocks:
        shm_in, shm_out = shared_memory.SharedMemory(name=in_name), shared_memory.SharedMemory(name=out_name)
        m["shm"] += [shm_in, shm_out]
        data = np.ndarray(info.input.shape, dtype=np.dtype(info.input.dtype), buffer=shm_in.buf)
        outputs = [(interp.tensor(t.index), view) for t, view in zip(info.outputs, output_views(info, shm_out.buf))]
        m["slots"].append((data, outputs))
    return ("ok",)


def _infer(msg: tuple[Any, ...], models: dict[str, dict[str, Any]]) -> tuple[Any, ...]:
    """``("infer", id, key, slot)``: invoke on the slot's input -> ``("ok", id, invoke seconds)``."""
    _, request, key, slot = msg
    m = models[key]
    interp = m["loaded"].interpreter
    data, outputs = m["slots"][slot]
    view = m["tensor"]()
    np.copyto(view, data)
    del view
    emulated = m["emulated"]
    try:
        if emulated is not None:
            return ("ok", request, emulated.invoke(interp, data, outputs, test=request == 0))
        t0 = time.perf_counter()
        interp.invoke()
        seconds = time.perf_counter() - t0
    except Exception as exc:
        raise WorkerFailure(f"invoke failed: {_one_line(exc)}", "invoke") from None
    for tensor, out in outputs:  # outputs go back through shared memory too
        np.copyto(out, tensor())
    return ("ok", request, seconds)


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
