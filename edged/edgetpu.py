"""Finding Edge TPUs without pycoral: sysfs scan, device selectors, temperature, library names, model pairs.

Pure functions and frozen dataclasses; nothing here opens a device or loads the delegate.

* USB Corals are found in ``<sysfs>/bus/usb/devices/*`` by their vendor:product ids
  (``1a6e:089a`` before libedgetpu has loaded the firmware, ``18d1:9302`` after).
* PCIe/M.2 Corals are ``/dev/apex_N`` device nodes and ``<sysfs>/class/apex/apex_N``
  directories (the gasket/apex kernel driver), merged by N; the chip temperature is in
  ``<sysfs>/class/apex/apex_N/temp`` in millidegrees Celsius.
* When Coral's pycoral (from Coral's apt repository, never a dependency) imports, its
  ``list_edge_tpus()`` -- libedgetpu's own enumeration -- is used instead.

The order of :func:`list_edge_tpus` is libedgetpu's ``EnumerateEdgeTpu()`` order: PCIe
devices first (the PCIe driver provider registers before the USB one in
``beagle_all_driver_provider_linux``), then USB devices. A selector ``":N"`` indexes that
combined list, exactly as libedgetpu's ``tflite_plugin_create_delegate`` does; ``"usb:N"``
and ``"pci:N"`` count within one type; no selector (any TPU) prefers PCIe, then USB, as
libedgetpu's ``OpenDevice()`` does.

Tests point the scan at a fake tree with ``EDGED_SYSFS_ROOT`` / ``EDGED_DEV_ROOT`` (or the
``sysfs_root`` / ``dev_root`` arguments); pycoral is not consulted then.
"""

from __future__ import annotations

import os
import platform
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .model import cpu_twin, edgetpu_twin

USB_IDS = {
    ("1a6e", "089a"): "Global Unichip (Coral USB, before firmware load)",
    ("18d1", "9302"): "Google (Coral USB, runtime)",
}

SYSFS_ROOT_ENV = "EDGED_SYSFS_ROOT"
DEV_ROOT_ENV = "EDGED_DEV_ROOT"

TYPES = ("usb", "pci")
SELECTOR_FORMS = "'usb', 'usb:N', 'pci', 'pci:N', ':N' (N = 0, 1, ...) or empty for any Edge TPU"

_LIBRARIES = {"Linux": "libedgetpu.so.1", "Darwin": "libedgetpu.1.dylib", "Windows": "edgetpu.dll"}
_APEX = re.compile(r"apex_([0-9]+)")
_SELECTOR = re.compile(r"(usb|pci|)(?::([0-9]+))?")
_INT_MAX = 2**31 - 1  # libedgetpu parses the index into a C int


@dataclass(frozen=True)
class EdgeTpu:
    """One Edge TPU as libedgetpu would enumerate it."""

    type: str  # "usb" | "pci"
    index: int  # N-th of its type, in libedgetpu's enumeration order
    path: str  # sysfs device dir for USB (/sys/bus/usb/devices/2-1), /dev/apex_N for PCIe
    vendor: str | None = None  # hex id, lowercase, no 0x
    product: str | None = None  # hex id, lowercase, no 0x
    serial: str | None = None
    description: str | None = None
    temperature_path: str | None = None  # /sys/class/apex/apex_N/temp when present
    source: str = "sysfs"  # "sysfs" | "pycoral"

    @property
    def selector(self) -> str:
        """The libedgetpu ``device`` option that names this TPU: ``usb:0``, ``pci:1``."""
        return f"{self.type}:{self.index}"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["selector"] = self.selector
        return d


# --------------------------------------------------------------------------- discovery


def discovery_roots(
    sysfs_root: str | Path | None = None, dev_root: str | Path | None = None
) -> tuple[Path, Path, bool]:
    """(sysfs root, dev root, overridden): arguments, else EDGED_SYSFS_ROOT / EDGED_DEV_ROOT, else /sys, /dev."""
    env_sys = os.environ.get(SYSFS_ROOT_ENV) or None
    env_dev = os.environ.get(DEV_ROOT_ENV) or None
    sys_r = sysfs_root if sysfs_root is not None else env_sys
    dev_r = dev_root if dev_root is not None else env_dev
    overridden = sys_r is not None or dev_r is not None
    return Path(sys_r or "/sys"), Path(dev_r or "/dev"), overridden


def list_edge_tpus(
    sysfs_root: str | Path | None = None, dev_root: str | Path | None = None, use_pycoral: bool = True
) -> list[EdgeTpu]:
    """Every Edge TPU present, PCIe first then USB (libedgetpu's enumeration order).

    Uses Coral's pycoral when it imports (and the roots are not overridden), else scans
    sysfs and /dev. Never raises for a missing or unreadable tree: that is "none found".
    """
    sys_root, dev_r, overridden = discovery_roots(sysfs_root, dev_root)
    if use_pycoral and not overridden:
        found = _from_pycoral(sys_root)
        if found is not None:
            return found
    return _scan_pci(sys_root, dev_r) + _scan_usb(sys_root)


def _from_pycoral(sys_root: Path) -> list[EdgeTpu] | None:
    """pycoral's list, enriched from sysfs; None when pycoral is absent or misbehaves."""
    try:
        from pycoral.utils.edgetpu import list_edge_tpus as pycoral_list  # type: ignore[import-not-found]

        records = list(pycoral_list())
        counts = {t: 0 for t in TYPES}
        out = []
        for rec in records:
            kind, path = rec["type"], rec["path"]
            if kind not in counts or not isinstance(path, str):
                return None
            out.append(_pycoral_record(kind, counts[kind], path, sys_root))
            counts[kind] += 1
        return out
    except Exception:  # ImportError, PyPI's unrelated "pycoral", an old or broken build: scan sysfs
        return None


def _pycoral_record(kind: str, index: int, path: str, sys_root: Path) -> EdgeTpu:
    if kind == "usb":
        tpu = _usb_device(Path(path), path)
        if tpu is not None:
            return replace(tpu, index=index, source="pycoral")
        return EdgeTpu("usb", index, path, source="pycoral")
    m = _APEX.fullmatch(Path(path).name)
    info = _pci_info(sys_root, int(m.group(1))) if m else {}
    return EdgeTpu("pci", index, path, source="pycoral", **info)


def _read(path: Path) -> str | None:
    """A sysfs attribute, stripped; None when absent, unreadable or empty."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip()
    except (OSError, ValueError):
        return None
    return text or None


def _hex_id(path: Path) -> str | None:
    text = _read(path)
    if text is None:
        return None
    text = text.lower()
    return text[2:] if text.startswith("0x") else text


def _usb_device(dev_dir: Path, shown_path: str) -> EdgeTpu | None:
    ids = (_hex_id(dev_dir / "idVendor"), _hex_id(dev_dir / "idProduct"))
    if ids not in USB_IDS:
        return None
    strings = [s for s in (_read(dev_dir / "manufacturer"), _read(dev_dir / "product")) if s]
    return EdgeTpu(
        type="usb",
        index=0,
        path=shown_path,
        vendor=ids[0],
        product=ids[1],
        serial=_read(dev_dir / "serial"),
        description=" ".join(strings) if strings else USB_IDS[ids],
    )


def _scan_usb(sys_root: Path) -> list[EdgeTpu]:
    """USB Corals in <sysfs>/bus/usb/devices, sorted by their sysfs name (2-1, 2-1.4, 3-2, ...).

    libedgetpu takes libusb's device-list order, which libusb does not define; with two or
    more USB Corals and no pycoral, ``usb:N`` follows this sorted order.
    """
    base = sys_root / "bus" / "usb" / "devices"
    try:
        entries = sorted(base.iterdir(), key=lambda p: p.name)
    except OSError:
        return []
    out: list[EdgeTpu] = []
    for entry in entries:
        tpu = _usb_device(entry, str(entry))
        if tpu is not None:
            out.append(replace(tpu, index=len(out)))
    return out


def _apex_numbers(directory: Path) -> set[int]:
    try:
        names = [p.name for p in directory.iterdir()]
    except OSError:
        return set()
    return {int(m.group(1)) for m in map(_APEX.fullmatch, names) if m}


def _pci_info(sys_root: Path, n: int) -> dict[str, Any]:
    cls = sys_root / "class" / "apex" / f"apex_{n}"
    temp = cls / "temp"
    return {
        "vendor": _hex_id(cls / "device" / "vendor"),
        "product": _hex_id(cls / "device" / "device"),
        "temperature_path": str(temp) if temp.is_file() else None,
    }


def _scan_pci(sys_root: Path, dev_root: Path) -> list[EdgeTpu]:
    """PCIe Corals: /dev/apex_N nodes and <sysfs>/class/apex/apex_N directories, merged by N, in N order."""
    nodes = _apex_numbers(dev_root)
    classes = _apex_numbers(sys_root / "class" / "apex")
    out = []
    for i, n in enumerate(sorted(nodes | classes)):
        node = dev_root / f"apex_{n}"
        description = "Coral PCIe Edge TPU"
        if n not in nodes:
            description += f" (no device node {node}: check the udev rule of the apex driver)"
        out.append(EdgeTpu("pci", i, str(node), description=description, **_pci_info(sys_root, n)))
    return out


# --------------------------------------------------------------------------- selectors


def parse_selector(value: str | None) -> tuple[str | None, int | None]:
    """A libedgetpu/pycoral ``device`` string as (type, index); None means "any".

    ``None``/``""`` -> (None, None); ``"usb"`` -> ("usb", None); ``"usb:1"`` -> ("usb", 1);
    ``"pci"``, ``"pci:N"`` likewise; ``":N"`` -> (None, N), the N-th TPU of any type.
    Anything else raises :class:`ConfigError` (libedgetpu would refuse it too).
    """
    if value is None or value == "":
        return None, None
    m = _SELECTOR.fullmatch(value) if isinstance(value, str) else None
    if m is None or (m.group(1) == "" and m.group(2) is None) or (m.group(2) and int(m.group(2)) > _INT_MAX):
        raise ConfigError(f"invalid Edge TPU device {value!r}: use {SELECTOR_FORMS}")
    kind = m.group(1) or None
    index = int(m.group(2)) if m.group(2) is not None else None
    return kind, index


def select(tpus: list[EdgeTpu], value: str | None) -> EdgeTpu | None:
    """The TPU ``value`` names among ``tpus`` (in :func:`list_edge_tpus` order), or None if absent.

    ``":N"`` is the N-th of the whole list; ``"usb:N"``/``"pci:N"`` the one with that type and
    index; ``"usb"``/``"pci"`` the first of that type; no selector the first PCIe TPU, else the
    first USB one (libedgetpu's preference). Raises ConfigError for a malformed selector.
    """
    kind, index = parse_selector(value)
    if kind is None and index is not None:
        return tpus[index] if index < len(tpus) else None
    if kind is None:
        for wanted in ("pci", "usb"):
            found = next((t for t in tpus if t.type == wanted), None)
            if found is not None:
                return found
        return tpus[0] if tpus else None
    of_kind = [t for t in tpus if t.type == kind]
    if index is None:
        return of_kind[0] if of_kind else None
    return next((t for t in of_kind if t.index == index), None)


# --------------------------------------------------------------------------- library, temperature, models


def default_library() -> str:
    """The Edge TPU delegate's shared library name on this platform, as pycoral loads it."""
    return _LIBRARIES.get(platform.system(), _LIBRARIES["Linux"])


def read_temperature(tpu_or_path: EdgeTpu | str | Path | None) -> float | None:
    """Degrees Celsius from an apex ``temp`` file (millidegrees: "45250" -> 45.25); None if absent or garbled."""
    if isinstance(tpu_or_path, EdgeTpu):
        tpu_or_path = tpu_or_path.temperature_path
    if tpu_or_path is None:
        return None
    text = _read(Path(tpu_or_path))
    if text is None or not re.fullmatch(r"-?[0-9]+", text):
        return None
    return int(text) / 1000.0


def model_pair(path: str | Path, cpu_path: str | Path | None = None) -> tuple[Path | None, Path | None]:
    """(Edge TPU model, CPU model) for a configured model path.

    * ``foo_edgetpu.tflite`` -> (it, ``cpu_path`` or ``foo.tflite`` when that file exists beside it, else None);
    * ``foo.tflite`` -> (``foo_edgetpu.tflite`` when that file exists beside it, else None; ``cpu_path`` or it).
    """
    p = Path(path)
    cpu = Path(cpu_path) if cpu_path is not None else None
    twin = cpu_twin(p)
    if twin is not None:
        return p, cpu if cpu is not None else (twin if twin.is_file() else None)
    compiled = edgetpu_twin(p)
    edgetpu = compiled if compiled.is_file() else None
    return edgetpu, cpu if cpu is not None else p
