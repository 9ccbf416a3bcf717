"""A booted guest (:mod:`support.vm` builds the images): QEMU on a throw-away overlay, SSH to it,
and a pool that readies several guests at once (each install is minutes of one emulated core, so
the guests are booted and installed side by side while the tests of the first one run)."""

from __future__ import annotations

import contextlib
import shlex
import socket
import subprocess
import tarfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from .vm import Image, Spec, image


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Result:
    rc: int
    out: str
    err: str


@dataclass
class Guest:
    """A booted guest: ``run`` a shell command in it as root over SSH, ``put`` a folder into it."""

    image: Image
    workdir: Path
    port: int
    proc: Optional[subprocess.Popen]  # None: a guest attached to (EDGED_VM_ATTACH), not started here
    console: Path
    boot_seconds: float = 0.0
    install_seconds: float = 0.0
    install_log: str = ""

    def ssh_command(self) -> list[str]:
        return [
            "ssh",
            *("-i", str(self.image.key), "-p", str(self.port)),
            *("-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"),
            *("-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-o", "ServerAliveInterval=10"),
            "root@127.0.0.1",
        ]

    def run(self, command: str, timeout: float = 120, check: bool = True, input: Optional[bytes] = None) -> Result:
        """``command`` run by bash in the guest; with ``check`` a non-zero exit fails, showing its output."""
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"the guest exited ({self.proc.returncode}); console: {self.console_tail()}")
        proc = subprocess.run(
            [*self.ssh_command(), "bash", "-c", shlex.quote(command)], input=input, capture_output=True, timeout=timeout
        )
        res = Result(proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace"))
        if check and res.rc != 0:
            raise AssertionError(f"in the guest, `{command}` exited {res.rc}:\n{res.out[-3000:]}\n{res.err[-3000:]}")
        return res

    def put(self, src: Path, dest: str, exclude: tuple[str, ...] = ()) -> None:
        """Copy the folder ``src`` to ``dest`` in the guest (a tar stream over SSH)."""
        excluded = {src / e for e in exclude}

        def keep(info: tarfile.TarInfo) -> Optional[tarfile.TarInfo]:
            parts = Path(info.name).parts
            if any(p in ("__pycache__", ".pytest_cache", ".ruff_cache") or p.endswith(".egg-info") for p in parts):
                return None
            return None if (src / info.name) in excluded else info

        tmp = self.workdir / "put.tar"
        with tarfile.open(tmp, "w") as tar:
            tar.add(src, arcname=".", filter=lambda i: keep(i) if i.name != "." else i)
        self.run(
            f"rm -rf {shlex.quote(dest)} && mkdir -p {shlex.quote(dest)} && tar -C {shlex.quote(dest)} -xf -",
            input=tmp.read_bytes(),
            timeout=300,
        )
        tmp.unlink()

    def console_tail(self, lines: int = 40) -> str:
        try:
            return "".join(self.console.read_text(errors="replace").splitlines(True)[-lines:])
        except OSError:
            return "(no console log)"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(Exception):
                self.run("systemctl poweroff", timeout=15, check=False)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def qemu_command(
    image: Image, overlay: Path, port: int, console: Path, memory: str = "2048", cpus: int = 2
) -> list[str]:
    net = ["-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:22"]
    disk = ["-drive", f"file={overlay},if=virtio,format=qcow2,cache=unsafe"]
    # software emulation (TCG): a KVM guest hangs here (no nested virtualisation)
    if image.spec.arch == "arm64":  # QEMU's virt board with a Raspberry Pi 4's cores (Cortex-A72)
        machine, console_dev = ["qemu-system-aarch64", "-machine", "virt", "-cpu", "cortex-a72"], "ttyAMA0"
    else:
        machine, console_dev = ["qemu-system-x86_64", "-machine", "q35,accel=tcg", "-cpu", "max"], "ttyS0"
    append = f"root=/dev/vda console={console_dev} rw net.ifnames=0 systemd.show_status=false"
    nic = "virtio-net-pci"
    return [
        *machine,
        *("-m", memory, "-smp", str(cpus), "-display", "none", "-monitor", "none", "-no-reboot"),
        *("-serial", f"file:{console}"),
        *("-kernel", str(image.kernel), "-initrd", str(image.initrd), "-append", append),
        *disk,
        *net,
        *("-device", f"{nic},netdev=n0"),
    ]


def boot(image: Image, workdir: Path, timeout: float = 600, cpus: int = 1) -> Guest:
    """Boot ``image`` on a fresh overlay; returns once SSH answers (systemd's units are started)."""
    workdir.mkdir(parents=True, exist_ok=True)
    overlay = workdir / "overlay.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(image.disk), "-F", "raw", str(overlay)], check=True
    )
    port = free_port()
    console = workdir / "console.log"
    started = time.monotonic()
    proc = subprocess.Popen(
        qemu_command(image, overlay, port, console, cpus=cpus),
        stdin=subprocess.DEVNULL,
        stdout=open(workdir / "qemu.log", "wb"),
        stderr=subprocess.STDOUT,
    )
    guest = Guest(image, workdir, port, proc, console)
    deadline = started + timeout
    while True:
        if proc.poll() is not None:
            raise AssertionError(
                f"QEMU exited ({proc.returncode}) while booting: {(workdir / 'qemu.log').read_text()}"
                f"\nconsole:\n{guest.console_tail()}"
            )
        try:
            if guest.run("true", timeout=20, check=False).rc == 0:
                break
        except subprocess.TimeoutExpired:
            pass
        if time.monotonic() > deadline:
            guest.stop()
            raise AssertionError(f"no SSH from the guest after {timeout:.0f}s; console:\n{guest.console_tail()}")
        time.sleep(1)
    # systemd done starting units (is-system-running waits for the boot to end)
    guest.run("systemctl is-system-running --wait >/dev/null || true", timeout=timeout)
    guest.boot_seconds = time.monotonic() - started
    return guest


EXCLUDE = (".git", ".venv", ".venv-tflite", ".venv-py313", ".venv-convert", "build", "dist")


def install(spec: Spec, workdir: Path, checkout: Path, cpus: int = 1) -> Guest:
    """A fresh boot of ``spec``'s image with edged installed from ``checkout`` by deploy/install.sh."""
    g = boot(image(spec), workdir, cpus=cpus)
    try:
        g.put(checkout, "/root/edged", exclude=EXCLUDE)
        started = time.monotonic()
        cmd = "set -o pipefail; cd /root/edged && bash deploy/install.sh 2>&1 | tee /root/install.log"
        g.install_log = g.run(cmd, timeout=3600).out
        g.install_seconds = time.monotonic() - started
    except BaseException:
        g.stop()
        raise
    return g


class Pool:
    """Guests readied side by side (image built when missing, booted, installed): ``get(spec)``
    waits for one; ``close()`` powers them all off."""

    def __init__(self, make: Callable[[Spec], Guest], specs: list[Spec]) -> None:
        self._make = make
        self.started = time.monotonic()
        self._futures: dict[Spec, Future] = {}
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=max(1, len(specs)), thread_name_prefix="guest")
        for spec in specs:
            self._start(spec)

    def _start(self, spec: Spec) -> Future:
        with self._lock:
            if spec not in self._futures:
                self._futures[spec] = self._executor.submit(self._make, spec)
            return self._futures[spec]

    def get(self, spec: Spec) -> Guest:
        return self._start(spec).result()

    def wait(self, spec: Spec, budget: float) -> Guest:
        """:meth:`get`, giving up ``budget`` s after the pool started (concurrent.futures.TimeoutError)."""
        return self._start(spec).result(timeout=max(0.0, self.started + budget - time.monotonic()))

    def close(self) -> None:
        for fut in self._futures.values():
            with contextlib.suppress(BaseException):
                fut.result().stop()
        self._executor.shutdown(wait=False, cancel_futures=True)


def attach(spec: Spec, port: int, workdir: Path) -> Guest:
    """A guest already running with edged installed (kept by ``python -m support.guest keep``), on ``port``."""
    workdir.mkdir(parents=True, exist_ok=True)
    g = Guest(image(spec), workdir, port, None, workdir / "console.log")
    g.install_log = g.run("cat /root/install.log").out
    return g


def attached(value: str) -> dict[str, int]:
    """EDGED_VM_ATTACH=``bookworm-amd64=PORT,...``: the guests to attach to instead of booting."""
    pairs = (item.split("=", 1) for item in value.split(",") if "=" in item)
    return {name.strip(): int(port) for name, port in pairs}


def keep(name: str, checkout: Path) -> None:
    """Boot ``name`` (``bookworm-amd64``), install edged from ``checkout``, print how to attach, and
    keep the guest running until this process is told to stop (SIGTERM, SIGINT)."""
    import signal
    import sys

    suite, arch = name.split("-")
    g = install(Spec(suite, arch), Path(f"/tmp/edged-guest-{name}"), checkout.resolve())

    def end(*_: object) -> None:
        g.stop()
        sys.exit(0)

    signal.signal(signal.SIGTERM, end)
    signal.signal(signal.SIGINT, end)
    print(f"{name}: boot {g.boot_seconds:.0f} s, install.sh {g.install_seconds:.0f} s; EDGED_VM_ATTACH={name}={g.port}",
          flush=True)  # fmt: skip
    assert g.proc is not None
    g.proc.wait()


if __name__ == "__main__":  # python -m support.guest keep SUITE-ARCH [CHECKOUT]  (from tests/)
    import sys

    keep(sys.argv[2], Path(sys.argv[3] if len(sys.argv) > 3 else ".."))
