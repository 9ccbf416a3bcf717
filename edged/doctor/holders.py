"""Which processes hold an Edge TPU's device node open: one TPU serves one process at a time.

libedgetpu keeps the node open while its delegate lives (libusb's ``/dev/bus/usb/BBB/DDD``,
or ``/dev/apex_N``), so a second program's delegate load fails ("Failed to load delegate")
while Frigate, another container or a running edged holds it. The doctor reads
``/proc/<pid>/fd`` (every process as root, only one's own otherwise), names the holders in an
``in-use`` check, and does not run its delegate test on a TPU that is held (``--device`` runs
it anyway).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..edgetpu import EdgeTpu
from .findings import INFO, OK, WARNING, Finding


@dataclass(frozen=True)
class Holder:
    pid: int
    name: str  # /proc/<pid>/comm
    edged: bool  # an edged process (the daemon or one of its Edge TPU workers)

    def __str__(self) -> str:
        return f"pid {self.pid} ({self.name})"


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


def holders(node: Path, proc_root: Path = Path("/proc")) -> list[Holder]:
    """The processes (but this one) with ``node`` open, by pid."""
    try:
        target = str(node.resolve())
        pids = sorted(int(p.name) for p in proc_root.iterdir() if p.name.isdigit())
    except OSError:
        return []
    out = []
    for pid in pids:
        if pid == os.getpid():
            continue
        fd_dir = proc_root / str(pid) / "fd"
        try:
            fds = list(os.scandir(fd_dir))
        except OSError:  # gone, or not ours to read
            continue
        if not any(_link(fd.path) == target for fd in fds):
            continue
        name = _read(proc_root / str(pid) / "comm").decode(errors="replace").strip() or "?"
        argv = _read(proc_root / str(pid) / "cmdline").split(b"\0")[:3]
        edged = name == "edged" or any(b"edged" in a for a in argv)
        out.append(Holder(pid, name, edged))
    return out


def _link(path: str) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


def in_use_finding(tpu: EdgeTpu, node: Path | None, proc_root: Path = Path("/proc")) -> Finding | None:
    """The ``in-use`` check of one TPU (None when its node is unknown)."""
    if node is None or not node.exists():
        return None
    held = holders(node, proc_root)
    details = {"node": str(node), "holders": [{"pid": h.pid, "name": h.name, "edged": h.edged} for h in held]}
    if not held:
        scope = "" if os.geteuid() == 0 else " (of this user's processes; as root the doctor sees every one)"
        return Finding("in-use", OK, f"{node} is not held by another process{scope}", tpu=tpu.selector, details=details)
    names = ", ".join(str(h) for h in held)
    if all(h.edged for h in held):
        text = f"in use by edged, {names}: the delegate test is not run on it"
        remedy = (
            "`sudo systemctl stop edged` to test it (`--device` runs the test anyway, and fails while edged holds it)"
        )
        return Finding("in-use", INFO, text, remedy, tpu=tpu.selector, details=details)
    text = (
        f"in use by {names}: an Edge TPU serves one process at a time, so edged's delegate load fails while "
        "it is held (the delegate test is not run on it)"
    )
    remedy = (
        "stop that program or give it another TPU (Frigate: its `detectors:` device; a container: do not pass "
        "this TPU to two of them), then restart edged"
    )
    return Finding("in-use", WARNING, text, remedy, tpu=tpu.selector, details=details)


def held_note(tpu: EdgeTpu) -> str:
    """For a delegate that did not load: "; <node> is held by pid N (name) ..." when another process
    holds the TPU's node, else ""."""
    from ..edgetpu import discovery_roots
    from .hardware import node_path

    node = node_path(tpu, discovery_roots()[1])
    held = holders(node) if node is not None else []
    if not held:
        return ""
    return f"; {node} is held by {', '.join(map(str, held))}: an Edge TPU serves one process at a time"
