"""The doctor's checks of the board itself: what sysfs, /dev and the kernel say about the Edge TPUs.

Pure reads of ``<sysfs>`` and ``<dev>`` (``EDGED_SYSFS_ROOT`` / ``EDGED_DEV_ROOT`` or the
arguments, as :mod:`edged.edgetpu`); nothing here opens a device or loads the delegate.

* **Found, and in which state**: a USB Accelerator enumerates as ``1a6e:089a`` until libedgetpu
  has loaded its firmware, then as ``18d1:9302``. Before any load that is normal; after a load
  attempt it means the firmware did not take (power, cable, a VM passing only one id through).
* **USB link speed**: ``<sysfs>/bus/usb/devices/<dev>/speed`` in Mb/s (480 = USB 2, 5000 = USB 3).
* **Device nodes**: ``/dev/bus/usb/BBB/DDD`` (from the device's ``busnum``/``devnum``) or
  ``/dev/apex_N``, their owner, group and mode against the user edged runs as.
* **The PCIe driver**: a Coral PCIe function (``1ac1:089a``) in ``<sysfs>/bus/pci/devices``, the
  ``gasket`` and ``apex`` modules in ``<sysfs>/module``, the driver bound and ``/dev/apex_N``.
* **Kernel**: its release and page size (the apex driver needs 4 KiB pages; Raspberry Pi 5
  kernels default to 16 KiB), the board model from the device tree.
* **Temperature** of each PCIe TPU against the trip points the apex driver publishes
  (``trip_point0..2_temp``: the clock is cut to 250, 125 and 62.5 MHz from 500; ``hw_temp_warn2``
  (else ``hw_temp_warn1``), when enabled: the chip shuts down), all in millidegrees.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path

from ..edgetpu import EdgeTpu, _read, discovery_roots, list_edge_tpus, read_temperature
from .findings import INFO, OK, PROBLEM, WARNING, Finding

BOOT_IDS = ("1a6e", "089a")  # the USB Accelerator before its firmware is loaded
PCI_IDS = ("1ac1", "089a")  # the Coral PCIe/M.2 function (Global Unichip)
CLOCK_STEPS_MHZ = (500.0, 250.0, 125.0, 62.5)  # the TPU's clock below trip point 0, 1, 2, beyond
DEFAULT_TRIPS = (85.0, 90.0, 95.0)  # the apex driver's defaults, used when the files are absent
SLOW_MS = "several times slower (70-80 ms where a USB 3 link gives about 10 ms for MobileNet)"


@dataclass(frozen=True)
class User:
    """The account whose access to the device nodes is checked."""

    name: str
    uid: int
    gids: frozenset[int]
    source: str  # "--user", "the unit's User=", "the current user"

    def groups(self) -> list[str]:
        return sorted(_group_name(g) for g in self.gids)


@dataclass(frozen=True)
class Host:
    """Facts of the running kernel; tests pass their own."""

    release: str
    page_size: int
    model: str | None  # the device tree's model ("Raspberry Pi 5 Model B Rev 1.0"), None off ARM boards

    @classmethod
    def current(cls, sysfs_root: Path) -> Host:
        model = _read(sysfs_root / "firmware" / "devicetree" / "base" / "model")
        return cls(os.uname().release, os.sysconf("SC_PAGE_SIZE"), model.rstrip("\x00") if model else None)


@dataclass(frozen=True)
class Thermal:
    """A PCIe TPU's temperature and the apex driver's trip points, in °C."""

    celsius: float
    trips: tuple[float, ...]  # throttle points, ascending
    shutdown: float | None
    trips_read: bool  # False: the driver's defaults stand in (no trip_point files)

    @property
    def step(self) -> int:
        """How many trip points are passed: 0 full speed, 1..3 throttled."""
        return sum(self.celsius >= t for t in self.trips)

    @property
    def clock_mhz(self) -> float:
        return CLOCK_STEPS_MHZ[min(self.step, len(CLOCK_STEPS_MHZ) - 1)]


# --------------------------------------------------------------------------- reads


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _owner_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def lookup_user(name: str, source: str) -> User | None:
    """The account ``name`` with all its groups; None when there is no such user."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return None
    gids = frozenset(os.getgrouplist(entry.pw_name, entry.pw_gid))
    return User(entry.pw_name, entry.pw_uid, gids, source)


def link_speed_mbps(tpu: EdgeTpu) -> float | None:
    """A USB TPU's negotiated link speed in Mb/s from sysfs (480.0 on USB 2), None when unknown."""
    if tpu.type != "usb":
        return None
    text = _read(Path(tpu.path) / "speed")
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def thermal(tpu: EdgeTpu, sysfs_root: Path | None = None) -> Thermal | None:
    """The temperature and trip points of a PCIe TPU; None when it has no temperature file."""
    celsius = read_temperature(tpu)
    if celsius is None or tpu.temperature_path is None:
        return None
    base = Path(tpu.temperature_path).parent
    trips = [read_temperature(base / f"trip_point{i}_temp") for i in range(3)]
    read = [t for t in trips if t is not None]
    shutdown = None
    for name in ("hw_temp_warn2", "hw_temp_warn1"):
        value = read_temperature(base / name)
        if value is not None and _read(base / f"{name}_en") != "0":
            shutdown = value
            break
    return Thermal(celsius, tuple(sorted(read)) if read else DEFAULT_TRIPS, shutdown, bool(read))


def usb_node(tpu: EdgeTpu, dev_root: Path) -> Path | None:
    """``<dev>/bus/usb/BBB/DDD`` of a USB TPU (from its sysfs busnum and devnum), None when unknown."""
    bus, dev = _read(Path(tpu.path) / "busnum"), _read(Path(tpu.path) / "devnum")
    if bus is None or dev is None or not (bus.isdigit() and dev.isdigit()):
        return None
    return dev_root / "bus" / "usb" / f"{int(bus):03d}" / f"{int(dev):03d}"


def can_open(st: os.stat_result, user: User) -> bool:
    """Whether ``user`` may open a node with this owner, group and mode for reading and writing."""
    if user.uid == 0:
        return True
    if st.st_uid == user.uid:
        return st.st_mode & 0o600 == 0o600
    if st.st_gid in user.gids:
        return st.st_mode & 0o060 == 0o060
    return st.st_mode & 0o006 == 0o006


def pci_corals(sysfs_root: Path) -> list[Path]:
    """The Coral PCIe functions in ``<sysfs>/bus/pci/devices`` (whether or not a driver is bound)."""
    base = sysfs_root / "bus" / "pci" / "devices"
    try:
        entries = sorted(base.iterdir(), key=lambda p: p.name)
    except OSError:
        return []
    ids = ("0x" + PCI_IDS[0], "0x" + PCI_IDS[1])
    return [e for e in entries if (_read(e / "vendor"), _read(e / "device")) == ids]


# --------------------------------------------------------------------------- checks


def found_finding(tpus: list[EdgeTpu], sysfs_root: Path, dev_root: Path) -> Finding:
    if tpus:
        names = ", ".join(f"{t.selector} ({t.vendor}:{t.product})" if t.vendor else t.selector for t in tpus)
        return Finding("edgetpu-found", OK, f"{len(tpus)} Edge TPU{'s' * (len(tpus) != 1)}: {names}")
    usb = sysfs_root / "bus" / "usb" / "devices"
    return Finding(
        "edgetpu-found",
        WARNING,
        f"no Edge TPU found (looked for USB 1a6e:089a / 18d1:9302 in {usb}, PCIe {dev_root}/apex_* and "
        f"{sysfs_root}/class/apex): streams run on the CPU",
        "USB: plug the Accelerator straight into a USB 3 port with its own cable (`lsusb` must list it); "
        "PCIe/M.2: install the gasket/apex driver (see the apex-driver check)",
    )


def identity_finding(tpu: EdgeTpu, after_load: bool) -> Finding | None:
    """The USB TPU's enumeration state; ``after_load``: a delegate load was attempted on it."""
    if tpu.type != "usb":
        return None
    if (tpu.vendor, tpu.product) != BOOT_IDS:
        return Finding("usb-state", OK, f"{tpu.vendor}:{tpu.product}: firmware loaded", tpu=tpu.selector)
    if not after_load:
        return Finding(
            "usb-state",
            INFO,
            "1a6e:089a: firmware not loaded yet (libedgetpu loads it at the first use, then it shows as 18d1:9302)",
            tpu=tpu.selector,
        )
    return Finding(
        "usb-state",
        PROBLEM,
        "still 1a6e:089a after a delegate load: the firmware did not take and the device did not come back as "
        "18d1:9302",
        "give it power (a powered hub or a port that supplies 900 mA; not a front-panel or bus-powered hub), "
        "try the cable it came with, and in a virtual machine pass both 1a6e:089a and 18d1:9302 through; "
        "then unplug and replug it",
        tpu=tpu.selector,
    )


def link_finding(tpu: EdgeTpu) -> Finding | None:
    speed = link_speed_mbps(tpu)
    if tpu.type != "usb":
        return None
    details = {"link_speed_mbps": speed}
    if speed is None:
        return Finding("usb-link", INFO, "link speed unknown (no speed in sysfs)", tpu=tpu.selector, details=details)
    if speed >= 5000:
        return Finding("usb-link", OK, f"USB 3 link ({speed:g} Mb/s)", tpu=tpu.selector, details=details)
    status = WARNING if speed >= 480 else PROBLEM
    return Finding(
        "usb-link",
        status,
        f"on a USB {'2' if speed >= 480 else '1'} link ({speed:g} Mb/s): inference is {SLOW_MS}",
        "plug it into a USB 3 port (blue or marked SS) directly, with a USB 3 cable; `lsusb -t` shows 5000M "
        "when it is right",
        tpu=tpu.selector,
        details=details,
    )


def node_path(tpu: EdgeTpu, dev_root: Path) -> Path | None:
    """The device node libedgetpu opens for ``tpu``."""
    return usb_node(tpu, dev_root) if tpu.type == "usb" else Path(tpu.path)


def node_finding(tpu: EdgeTpu, dev_root: Path, user: User) -> Finding:
    node = node_path(tpu, dev_root)
    group = "plugdev" if tpu.type == "usb" else "apex"
    if node is None:
        return Finding("device-node", INFO, "device node unknown (no busnum/devnum in sysfs)", tpu=tpu.selector)
    try:
        st = node.stat()
    except OSError:
        remedy = (
            "the apex driver made no node: check `ls -l /dev/apex*`, the driver's udev rule "
            "(deploy/udev/60-edged-coral.rules) and `dmesg | grep apex`"
            if tpu.type == "pci"
            else "the kernel lists the device but /dev has no node for it: is /dev/bus/usb mounted (a container "
            "needs it passed through) and udev running? Replug it and check `ls -l /dev/bus/usb/*`"
        )
        return Finding("device-node", PROBLEM, f"{node} does not exist", remedy, tpu=tpu.selector)
    if not stat.S_ISCHR(st.st_mode):
        return Finding("device-node", PROBLEM, f"{node} is not a character device", tpu=tpu.selector)
    owner = f"{_owner_name(st.st_uid)}:{_group_name(st.st_gid)} {stat.S_IMODE(st.st_mode):04o}"
    details = {"node": str(node), "owner": owner, "user": user.name, "user_source": user.source}
    if can_open(st, user):
        return Finding("device-node", OK, f"{node} ({owner}) is open to {user.name}", tpu=tpu.selector, details=details)
    return Finding(
        "device-node",
        PROBLEM,
        f"{node} ({owner}) cannot be opened by {user.name} ({user.source}; groups {', '.join(user.groups())})",
        f"install the udev rule (deploy/udev/60-edged-coral.rules gives the node to group {group}), "
        f"`sudo usermod -aG {group} {user.name}`, replug the TPU (or `sudo udevadm trigger`) and restart edged",
        tpu=tpu.selector,
        details=details,
    )


def driver_findings(sysfs_root: Path, dev_root: Path, host: Host) -> list[Finding]:
    """The PCIe driver and the kernel it needs; no finding about the driver without a PCIe Coral."""
    functions = pci_corals(sysfs_root)
    page = f"{host.page_size // 1024} KiB pages"
    kernel = Finding("kernel", OK, f"Linux {host.release}, {page}" + (f", {host.model}" if host.model else ""))
    if not functions:
        if host.page_size != 4096:
            kernel = Finding(
                "kernel", INFO, f"{kernel.message} (a PCIe Coral would need 4 KiB pages; USB is unaffected)"
            )
        out = [Finding("apex-driver", INFO, f"no Coral PCIe function ({':'.join(PCI_IDS)}) on the PCI bus")]
        return [*out, kernel]
    modules = {m: (sysfs_root / "module" / m).is_dir() for m in ("gasket", "apex")}
    bound = [f for f in functions if (f / "driver").resolve().name == "apex"]
    nodes = sorted(p.name for p in _glob(dev_root, "apex_*"))
    out = []
    if host.page_size != 4096:
        pi5 = bool(host.model and "Raspberry Pi 5" in host.model)
        remedy = "boot a kernel with 4 KiB pages" + (
            ": add `kernel=kernel8.img` to /boot/firmware/config.txt (with `dtparam=pciex1`; the boot-config "
            "check says what else it lacks) and reboot"
            if pi5
            else ""
        )
        kernel = Finding("kernel", PROBLEM, f"Linux {host.release} has {page}: the apex driver needs 4 KiB", remedy)
    if not all(modules.values()):
        missing = " and ".join(m for m, here in modules.items() if not here)
        out.append(
            Finding(
                "apex-driver",
                PROBLEM,
                f"a Coral PCIe function is at {functions[0].name} but the {missing} module is not loaded",
                "install gasket-dkms (Coral's apt repository; on kernels 6.x build it from "
                "github.com/google/gasket-driver), then `sudo modprobe apex`; `dmesg | grep -i apex` says why "
                "it failed",
            )
        )
    elif not bound or not nodes:
        what = "no function is bound to the apex driver" if not bound else f"no {dev_root}/apex_N node"
        out.append(
            Finding(
                "apex-driver",
                PROBLEM,
                f"gasket and apex are loaded but {what}",
                "`dmesg | grep -i apex` (a failed probe: page size, PCIe overlays, MSI-X); the udev rule for the node",
            )
        )
    else:
        version = _read(sysfs_root / "module" / "apex" / "version")
        text = f"apex driver{' ' + version if version else ''} bound, {', '.join(nodes)}"
        out.append(Finding("apex-driver", OK, text))
    return [*out, kernel]


def thermal_finding(tpu: EdgeTpu) -> Finding | None:
    th = thermal(tpu)
    if th is None:
        return None
    details = {
        "celsius": th.celsius,
        "throttle_celsius": list(th.trips),
        "shutdown_celsius": th.shutdown,
        "clock_mhz": th.clock_mhz,
        "trips_from": "driver" if th.trips_read else "defaults",
    }
    points = f"throttles at {', '.join(f'{t:g}' for t in th.trips)} °C" + (
        f", shuts down at {th.shutdown:g} °C" if th.shutdown is not None else ""
    )
    remedy = "improve the cooling (a heat sink or fan on the module, airflow in the case) or give it less work"
    if th.shutdown is not None and th.celsius >= th.shutdown - 5:
        status, text = PROBLEM, f"{th.celsius:.1f} °C, near or past the shutdown point ({points})"
    elif th.step:
        status, text = WARNING, f"{th.celsius:.1f} °C: throttled to {th.clock_mhz:g} MHz of 500 ({points})"
    elif th.celsius >= th.trips[0] - 5:
        status, text = WARNING, f"{th.celsius:.1f} °C, within 5 °C of throttling ({points})"
    else:
        status, text, remedy = OK, f"{th.celsius:.1f} °C ({points})", None
    return Finding("temperature", status, text, remedy, tpu=tpu.selector, details=details)


def _glob(directory: Path, pattern: str) -> list[Path]:
    try:
        return list(directory.glob(pattern))
    except OSError:
        return []


def tpu_findings(tpu: EdgeTpu) -> list[Finding]:
    """What the daemon keeps checking for one TPU while it runs: the USB link and the temperature."""
    return [f for f in (link_finding(tpu), thermal_finding(tpu)) if f is not None]


def hardware_findings(
    user: User,
    host: Host | None = None,
    sysfs_root: str | Path | None = None,
    dev_root: str | Path | None = None,
    tpus: list[EdgeTpu] | None = None,
    boot: str | Path | None = None,
    proc: Path = Path("/proc"),
) -> list[Finding]:
    """Every hardware check, board first (a Pi 5's config.txt: ``boot``, see :mod:`.board`), then per TPU
    (who holds it open: ``proc``, see :mod:`.holders`)."""
    from .board import board_findings, boot_root
    from .holders import in_use_finding

    sys_r, dev_r, _ = discovery_roots(sysfs_root, dev_root)
    host = host or Host.current(sys_r)
    tpus = list_edge_tpus(sys_r, dev_r) if tpus is None else tpus
    board = driver_findings(sys_r, dev_r, host)
    pcie = bool(pci_corals(sys_r))
    board = board_findings(board, host.model, host.page_size, (boot_root(boot), dev_r), pcie, len(tpus))
    out = [found_finding(tpus, sys_r, dev_r), *board]
    for tpu in tpus:
        checks = (identity_finding(tpu, after_load=False), link_finding(tpu), node_finding(tpu, dev_r, user))
        held = in_use_finding(tpu, node_path(tpu, dev_r), proc)
        out += [f for f in (*checks, held, thermal_finding(tpu)) if f is not None]
    return out
