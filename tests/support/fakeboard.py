"""A fake board for the Edge TPU checks: a sysfs tree (the boundary: what the kernel shows), and a real
process holding a device node open (what /proc shows)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


def board(tmp: Path) -> tuple[Path, Path]:
    """(sysfs root, dev root): a USB Accelerator at 480 Mb/s (usb:0, its ``speed`` file at
    ``bus/usb/devices/2-1/speed``) and a PCIe TPU at 91.2 °C with trip points 85/90/95 and an enabled
    shutdown point at 110 °C (pci:0, ``class/apex/apex_0/temp``)."""
    sys_r, dev_r = tmp / "sys", tmp / "dev"
    usb = sys_r / "bus" / "usb" / "devices" / "2-1"
    for name, value in {"idVendor": "18d1", "idProduct": "9302", "speed": "480"}.items():
        _write(usb / name, value)
    apex = sys_r / "class" / "apex" / "apex_0"
    for name, value in {"temp": "91200", "trip_point0_temp": "85000", "trip_point1_temp": "90000"}.items():
        _write(apex / name, value)
    _write(apex / "trip_point2_temp", "95000")
    _write(apex / "hw_temp_warn2", "110000")
    _write(apex / "hw_temp_warn2_en", "1")
    dev_r.mkdir()
    return sys_r, dev_r


def hold(node: Path, argv0: str = "sleep") -> subprocess.Popen:
    """A real process holding ``node`` open on fd 3 (its name ``sleep``; ``argv0`` its argv[0])."""
    proc = subprocess.Popen(["bash", "-c", f'exec 3<"$1"; exec -a {argv0} sleep 60', "_", str(node)])
    fd, comm = Path(f"/proc/{proc.pid}/fd/3"), Path(f"/proc/{proc.pid}/comm")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if os.readlink(fd) == str(node.resolve()) and comm.read_text().strip() == "sleep":
                return proc
        except OSError:
            pass
        time.sleep(0.01)
    proc.kill()
    pytest.fail(f"the holder never opened {node}")
