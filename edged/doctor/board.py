"""The doctor's checks of a Raspberry Pi 5's firmware settings and of what the kernel logged about the TPU.

* **config.txt** (``<boot>/firmware/config.txt``, else ``<boot>/config.txt``; ``EDGED_BOOT_ROOT``
  or ``/boot``), read on a BCM2712 board (Raspberry Pi 5, 500, Compute Module 5) only, with its
  ``[section]`` filters and ``include`` lines. What an M.2 Coral on a Pi 5 needs from it:

  - the external PCIe connector on: ``dtparam=pciex1`` (or its alias ``nvme``), unless a HAT+
    enables it from its EEPROM;
  - a 4 KiB-page kernel: ``kernel=kernel8.img`` (the Pi 5 boots ``kernel_2712.img``, 16 KiB pages,
    which the apex driver does not support; raspberrypi/linux#6126);
  - the PCIe MSI parent moved off the Pi 5's MIP, or the apex driver "Couldn't initialize
    interrupts": ``dtoverlay=pineboards-hat-ai`` (raspberrypi/linux#6126) or
    ``dtoverlay=pciex1-compat-pi5,no-mip`` (raspberrypi/linux#6799).

* **The kernel log** (``<dev>/kmsg``, readable by root): the last lines of the apex and gasket
  drivers, added to an apex-driver problem, so the doctor shows the driver's own reason.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from .findings import INFO, OK, PROBLEM, WARNING, Finding

BOOT_ROOT_ENV = "EDGED_BOOT_ROOT"
BCM2712_MODELS = ("Raspberry Pi 5", "Raspberry Pi 500", "Compute Module 5")
MSI_FIX = "`dtoverlay=pineboards-hat-ai` (Pineboards' HAT) or `dtoverlay=pciex1-compat-pi5,no-mip`"
_ON = ("", "on", "true", "yes", "1")
_BOARD_FILTER = re.compile(r"(pi\d.*|cm\d.*)")
_KMSG_DRIVER = re.compile(r"\b(apex|gasket)\b")


def boot_root(root: str | Path | None = None) -> Path:
    return Path(root if root is not None else os.environ.get(BOOT_ROOT_ENV) or "/boot")


def is_bcm2712(model: str | None) -> bool:
    return bool(model) and any(m in model for m in BCM2712_MODELS)


@dataclass(frozen=True)
class BootConfig:
    """What the firmware will apply from config.txt on this board (the last assignment wins)."""

    path: Path
    kernel: str | None  # ``kernel=``; None: the board's default (kernel_2712.img on a Pi 5)
    pciex1: bool  # ``dtparam=pciex1`` / ``nvme``
    msi: str | None  # the overlay that moves the MSI parent off the MIP, as written


def _board_filter_applies(name: str, model: str) -> bool:
    """``[pi5]`` covers every BCM2712 board; ``[pi500]`` and ``[cm5]`` their own; other boards' do not apply."""
    if name == "pi5":
        return True
    return (name == "pi500" and "Raspberry Pi 500" in model) or (name == "cm5" and "Compute Module 5" in model)


def _lines(path: Path, depth: int = 0) -> Iterator[str]:
    """config.txt's lines with ``include`` files (in the same directory) spliced in."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if line.startswith("include ") and depth < 4:
            yield from _lines(path.parent / line.split(None, 1)[1].strip(), depth + 1)
        elif line:
            yield line


def parse_config(path: Path, model: str) -> BootConfig:
    """The settings that apply on ``model``: board filters checked, ``[none]``/``[tryboot]`` off, others assumed on."""
    board_ok = other_ok = True
    kernel, pciex1, msi = None, False, None
    for line in _lines(path):
        if line.startswith("[") and line.endswith("]"):
            name = line[1:-1].strip().lower()
            if name == "all":
                board_ok = other_ok = True
            elif _BOARD_FILTER.fullmatch(name):
                board_ok = _board_filter_applies(name, model)
            else:
                other_ok = name not in ("none", "tryboot")
            continue
        if not (board_ok and other_ok) or "=" not in line:
            continue
        key, value = (s.strip() for s in line.split("=", 1))
        if key == "kernel":
            kernel = value
        elif key == "dtparam":
            for param in value.split(","):
                name, _, setting = param.partition("=")
                if name.strip() in ("pciex1", "nvme"):
                    pciex1 = setting.strip().lower() in _ON
        elif key == "dtoverlay":
            overlay, *params = (s.strip() for s in value.split(","))
            if overlay == "pineboards-hat-ai" or (overlay == "pciex1-compat-pi5" and "no-mip" in params):
                msi = value
    return BootConfig(path, kernel, pciex1, msi)


def read_boot_config(root: Path, model: str) -> BootConfig | None:
    for rel in ("firmware/config.txt", "config.txt"):
        path = root / rel
        if path.is_file():
            return parse_config(path, model)
    return None


@dataclass(frozen=True)
class Board:
    """What the boot-config check weighs config.txt against."""

    model: str
    page_size: int  # the running kernel's
    pcie: bool  # a Coral PCIe function is on the bus
    driver_ok: bool  # the apex driver is bound with its node
    tpus: int  # Edge TPUs found in all (a USB one needs none of this)


def pi5_finding(board: Board, root: Path) -> Finding:
    """The "boot-config" check: config.txt against what an M.2 Coral needs on this BCM2712 board."""
    model, pcie, tpus = board.model, board.pcie, board.tpus
    cfg = read_boot_config(root, model)
    if cfg is None:
        text = f"{model}: no config.txt under {root}/firmware or {root}: the PCIe and kernel settings were not checked"
        return Finding("boot-config", INFO, text)
    details = {"path": str(cfg.path), "kernel": cfg.kernel, "pciex1": cfg.pciex1, "msi_overlay": cfg.msi}
    where = f"{cfg.path}"
    if not pcie:
        if cfg.pciex1:
            text = f"{where} turns the PCIe connector on (dtparam=pciex1) and no Coral is on it"
            remedy = "check the HAT's ribbon cable and its seating, then `lspci`; the HAT may need its own overlay"
            return Finding(
                "boot-config", WARNING if not tpus else INFO, text, remedy if not tpus else None, details=details
            )
        text = f"{where} leaves the external PCIe connector off (no dtparam=pciex1)"
        if tpus:
            return Finding("boot-config", INFO, text + ": nothing a USB Accelerator needs", details=details)
        remedy = (
            "for an M.2 Coral on a PCIe HAT: add `dtparam=pciex1` under [all] in config.txt and reboot "
            "(a HAT+ turns it on itself)"
        )
        return Finding(
            "boot-config", WARNING, text + ": an M.2 Coral on a PCIe HAT stays invisible", remedy, details=details
        )
    missing = []
    if board.page_size != 4096:
        missing.append(f"`kernel=kernel8.img` (it boots {cfg.kernel or 'kernel_2712.img'}, 16 KiB pages)")
    if cfg.msi is None and not board.driver_ok:
        missing.append(f"an MSI overlay, {MSI_FIX} (else the apex driver cannot set up its interrupts)")
    if missing:
        text = f"{where} lacks what the M.2 Coral needs on a {model}: " + "; ".join(missing)
        remedy = "add the missing lines under [all] in config.txt and reboot (sources: docs/edgetpu.md §8)"
        return Finding("boot-config", PROBLEM, text, remedy, details=details)
    settings = [f"kernel={cfg.kernel or 'the default'} ({board.page_size // 1024} KiB pages)"]
    if cfg.msi:
        settings.append(f"dtoverlay={cfg.msi}")
    return Finding("boot-config", OK, f"{where}: {', '.join(settings)}", details=details)


def kernel_log(dev_root: Path, limit: int = 3) -> list[str] | None:
    """The last ``limit`` lines the apex and gasket drivers logged (``<dev>/kmsg``); None when not permitted."""
    try:
        fd = os.open(dev_root / "kmsg", os.O_RDONLY | os.O_NONBLOCK)
    except PermissionError:  # dmesg_restrict: root only
        return None
    except OSError:  # no kernel log device (a container)
        return []
    chunks = []
    try:
        while True:  # /dev/kmsg gives one record a read, EAGAIN at the end; a plain file (tests) ends with b""
            try:
                chunk = os.read(fd, 8192)
            except OSError as exc:
                if exc.errno == errno.EPIPE:  # a record overwritten while reading: go on with the next
                    continue
                if exc.errno in (errno.EAGAIN, errno.EINVAL):
                    break
                return None
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(fd)
    lines = []
    for record in b"".join(chunks).decode("utf-8", "replace").splitlines():
        if record.startswith(" ") or ";" not in record:  # continuation lines carry the record's dictionary
            continue
        message = record.split(";", 1)[1].strip()
        if _KMSG_DRIVER.search(message):
            lines.append(message)
    return lines[-limit:]


def with_kernel_log(finding: Finding, dev_root: Path, pi5: bool) -> Finding:
    """An apex-driver problem with the driver's own last words from the kernel log, and the Pi 5's MSI remedy."""
    said = kernel_log(dev_root)
    if said is None:
        details = {**finding.details, "kernel_log": None}
        return replace(
            finding, remedy=f"{finding.remedy} (run the doctor as root to see the kernel's log)", details=details
        )
    if not said:
        return replace(finding, details={**finding.details, "kernel_log": []})
    remedy = finding.remedy
    if pi5 and any("initialize interrupts" in s for s in said):
        remedy = (
            f"the Pi 5's MIP cannot give the apex driver its MSI interrupts: add {MSI_FIX} to config.txt and reboot"
        )
    message = f"{finding.message}; the kernel said: {said[-1]}"
    return replace(finding, message=message, remedy=remedy, details={**finding.details, "kernel_log": said})


def board_findings(
    findings: list[Finding], model: str | None, page_size: int, roots: tuple[Path, Path], pcie: bool, tpus: int
) -> list[Finding]:
    """``findings`` with the kernel's log on an apex-driver problem, then the boot-config check on a BCM2712 board.
    ``roots``: (the boot root, the dev root)."""
    pi5 = is_bcm2712(model)
    out = [
        with_kernel_log(f, roots[1], pi5) if f.check == "apex-driver" and f.status == PROBLEM else f for f in findings
    ]
    if pi5 and model is not None:
        driver_ok = any(f.check == "apex-driver" and f.status == OK for f in out)
        out.append(pi5_finding(Board(model, page_size, pcie, driver_ok, tpus), roots[0]))
    return out
