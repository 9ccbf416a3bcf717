"""The doctor's hardware checks on fake sysfs, /dev and /boot trees (the boundary: what the kernel shows).

Each case is one a Coral user meets: a USB Accelerator on a USB 2 link, one stuck at 1a6e:089a
after a load attempt, a device node in a group the service user is not in, a PCIe Coral without
its driver or its node, a Raspberry Pi 5 kernel with 16 KiB pages or a config.txt without PCIe,
the apex driver's own error in the kernel log, a hot M.2 TPU. Device nodes
are real character devices made with mknod (the tests run as root, as CI does).
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from support.fakeboard import hold

from edged.doctor import board as brd
from edged.doctor import findings as fnd
from edged.doctor import hardware as hw
from edged.edgetpu import list_edge_tpus

EDGED = hw.User("edged", 4242, frozenset({4242}), "the unit's User=")
PLUGDEV_GID = 4343


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _node(path: Path, gid: int = PLUGDEV_GID, mode: int = 0o660, numbers: tuple[int, int] = (189, 3)) -> None:
    """A character node (a USB device's numbers; (1, 3), /dev/null's, for one a process can hold open)."""
    if os.geteuid() != 0:
        pytest.fail("these tests make device nodes with mknod and chown: run them as root (CI does)")
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mknod(path, stat.S_IFCHR | mode, os.makedev(*numbers))
    os.chown(path, 0, gid)
    os.chmod(path, mode)


def _usb(sys_root: Path, dev_root: Path, name: str, ids: tuple[str, str], speed: str, devnum: int = 3) -> None:
    d = sys_root / "bus" / "usb" / "devices" / name
    for key, value in {
        "idVendor": ids[0],
        "idProduct": ids[1],
        "speed": speed,
        "busnum": "2",
        "devnum": str(devnum),
    }.items():
        _write(d / key, value + "\n")
    _node(dev_root / "bus" / "usb" / "002" / f"{devnum:03d}")


def _pcie(sys_root: Path, dev_root: Path, temp: int | None = None, node: bool = True, module: bool = True) -> None:
    """A Coral PCIe function at 0000:01:00.0, its apex class directory, optionally the driver and /dev/apex_0."""
    fn = sys_root / "bus" / "pci" / "devices" / "0000:01:00.0"
    _write(fn / "vendor", "0x1ac1\n")
    _write(fn / "device", "0x089a\n")
    apex = sys_root / "class" / "apex" / "apex_0"
    apex.mkdir(parents=True)
    if temp is not None:
        _write(apex / "temp", f"{temp}\n")
    if module:
        for m in ("gasket", "apex"):
            (sys_root / "module" / m).mkdir(parents=True)
        _write(sys_root / "module" / "apex" / "version", "1.2\n")
        driver = sys_root / "bus" / "pci" / "drivers" / "apex"
        driver.mkdir(parents=True)
        (fn / "driver").symlink_to(driver)
    if node:
        _node(dev_root / "apex_0")


def _trips(sys_root: Path, warn2: int | None = 110000, warn2_en: str = "0") -> None:
    apex = sys_root / "class" / "apex" / "apex_0"
    for i, t in enumerate((85000, 90000, 95000)):
        _write(apex / f"trip_point{i}_temp", f"{t}\n")
    if warn2 is not None:
        _write(apex / "hw_temp_warn2", f"{warn2}\n")
        _write(apex / "hw_temp_warn2_en", warn2_en + "\n")


@pytest.fixture
def roots(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "sys", tmp_path / "dev"


def _by_check(found: list[fnd.Finding], check: str, tpu: str | None = None) -> fnd.Finding:
    matches = [f for f in found if f.check == check and f.tpu == tpu]
    assert len(matches) == 1, (check, tpu, found)
    return matches[0]


def _run(
    roots: tuple[Path, Path], user: hw.User = EDGED, page: int = 4096, model: str | None = None
) -> list[fnd.Finding]:
    boot = roots[0].parent / "boot"
    return hw.hardware_findings(user, hw.Host("6.6.51+rpt-rpi-2712", page, model), *roots, boot=boot)


# --------------------------------------------------------------------------- USB


def test_usb2_link_is_a_warning_with_the_cause_and_the_remedy(roots) -> None:
    _usb(*roots, "2-1", ("18d1", "9302"), "480")
    link = _by_check(_run(roots), "usb-link", "usb:0")
    assert link.status == fnd.WARNING
    assert "USB 2 link (480 Mb/s)" in link.message and "several times slower" in link.message
    assert "USB 3 port" in link.remedy
    assert link.details == {"link_speed_mbps": 480.0}


def test_usb3_link_is_ok_and_a_usb1_link_a_problem(roots) -> None:
    _usb(*roots, "2-1", ("18d1", "9302"), "5000", devnum=3)
    _usb(*roots, "2-2", ("18d1", "9302"), "12", devnum=4)
    found = _run(roots)
    assert _by_check(found, "usb-link", "usb:0").status == fnd.OK
    assert _by_check(found, "usb-link", "usb:1").status == fnd.PROBLEM


def test_boot_id_is_normal_before_a_load_and_a_problem_after_one(roots) -> None:
    _usb(*roots, "2-1", ("1a6e", "089a"), "5000")
    found = _run(roots)
    state = _by_check(found, "usb-state", "usb:0")
    assert state.status == fnd.INFO and "firmware not loaded yet" in state.message
    (tpu,) = list_edge_tpus(*roots)
    after = hw.identity_finding(tpu, after_load=True)
    assert after.status == fnd.PROBLEM
    assert "still 1a6e:089a after a delegate load" in after.message
    assert "power" in after.remedy and "virtual machine" in after.remedy and "18d1:9302" in after.remedy


def test_runtime_id_is_ok(roots) -> None:
    _usb(*roots, "2-1", ("18d1", "9302"), "5000")
    (tpu,) = list_edge_tpus(*roots)
    assert hw.identity_finding(tpu, after_load=True).status == fnd.OK


# --------------------------------------------------------------------------- device nodes and users


def test_node_in_a_group_the_user_is_not_in_is_a_problem_naming_the_group(roots) -> None:
    _usb(*roots, "2-1", ("18d1", "9302"), "5000")
    node = _by_check(_run(roots), "device-node", "usb:0")
    assert node.status == fnd.PROBLEM
    assert str(roots[1] / "bus/usb/002/003") in node.message and "cannot be opened by edged" in node.message
    assert "the unit's User=" in node.message
    assert "usermod -aG plugdev edged" in node.remedy and "60-edged-coral.rules" in node.remedy
    assert node.details["owner"].endswith(" 0660")


def test_node_is_ok_for_a_member_of_its_group_for_root_and_when_world_writable(roots) -> None:
    _usb(*roots, "2-1", ("18d1", "9302"), "5000")
    member = hw.User("edged", 4242, frozenset({4242, PLUGDEV_GID}), "--user")
    assert _by_check(_run(roots, member), "device-node", "usb:0").status == fnd.OK
    root = hw.User("root", 0, frozenset({0}), "the current user")
    assert _by_check(_run(roots, root), "device-node", "usb:0").status == fnd.OK
    os.chmod(roots[1] / "bus/usb/002/003", 0o666)
    assert _by_check(_run(roots), "device-node", "usb:0").status == fnd.OK


def test_read_only_group_access_is_not_enough(roots) -> None:
    _usb(*roots, "2-1", ("18d1", "9302"), "5000")
    os.chmod(roots[1] / "bus/usb/002/003", 0o640)
    member = hw.User("edged", 4242, frozenset({PLUGDEV_GID}), "--user")
    assert _by_check(_run(roots, member), "device-node", "usb:0").status == fnd.PROBLEM


def test_apex_node_is_checked_against_the_apex_group(roots) -> None:
    _pcie(*roots)
    node = _by_check(_run(roots), "device-node", "pci:0")
    assert node.status == fnd.PROBLEM and "usermod -aG apex edged" in node.remedy


def test_lookup_user_reads_the_account_and_its_groups() -> None:
    root = hw.lookup_user("root", "--user")
    assert root is not None and root.uid == 0 and 0 in root.gids and root.source == "--user"
    assert hw.lookup_user("no-such-user-edged", "--user") is None


# --------------------------------------------------------------------------- the PCIe driver and the kernel


def test_missing_apex_node_is_a_problem(roots) -> None:
    _pcie(*roots, node=False)
    found = _run(roots)
    assert "does not exist" in _by_check(found, "device-node", "pci:0").message
    driver = _by_check(found, "apex-driver")
    assert driver.status == fnd.PROBLEM and "no " in driver.message and "apex_N node" in driver.message


def test_pcie_coral_without_its_modules_says_to_install_gasket(roots) -> None:
    _pcie(*roots, node=False, module=False)
    driver = _by_check(_run(roots), "apex-driver")
    assert driver.status == fnd.PROBLEM
    assert "0000:01:00.0" in driver.message and "gasket and apex module is not loaded" in driver.message
    assert "gasket-dkms" in driver.remedy and "modprobe apex" in driver.remedy


def test_bound_driver_with_its_node_is_ok(roots) -> None:
    _pcie(*roots)
    driver = _by_check(_run(roots), "apex-driver")
    assert driver.status == fnd.OK and "apex driver 1.2 bound, apex_0" == driver.message


def test_pi5_16k_pages_with_a_pcie_coral_says_kernel8(roots) -> None:
    _pcie(*roots)
    kernel = _by_check(_run(roots, page=16384, model="Raspberry Pi 5 Model B Rev 1.0"), "kernel")
    assert kernel.status == fnd.PROBLEM and "16 KiB pages" in kernel.message
    assert "kernel=kernel8.img" in kernel.remedy and "dtparam=pciex1" in kernel.remedy


def test_16k_pages_without_a_pcie_coral_is_only_information(roots) -> None:
    _usb(*roots, "2-1", ("18d1", "9302"), "5000")
    found = _run(roots, page=16384, model="Raspberry Pi 5 Model B Rev 1.0")
    assert _by_check(found, "kernel").status == fnd.INFO
    assert _by_check(found, "apex-driver").status == fnd.INFO


def test_host_reads_the_board_model_from_the_device_tree(roots) -> None:
    _write(roots[0] / "firmware/devicetree/base/model", "Raspberry Pi 5 Model B Rev 1.0\x00")
    host = hw.Host.current(roots[0])
    assert host.model == "Raspberry Pi 5 Model B Rev 1.0"
    assert host.page_size == os.sysconf("SC_PAGE_SIZE") and host.release == os.uname().release


# --------------------------------------------------------------------------- temperature


def test_hot_tpu_is_throttled_and_says_to_what_clock(roots) -> None:
    _pcie(*roots, temp=91200)
    _trips(roots[0])
    temp = _by_check(_run(roots), "temperature", "pci:0")
    assert temp.status == fnd.WARNING
    assert temp.message.startswith("91.2 °C: throttled to 125 MHz of 500")
    assert "throttles at 85, 90, 95 °C" in temp.message and "shuts down" not in temp.message  # warn2 disabled
    assert temp.details["trips_from"] == "driver" and temp.details["clock_mhz"] == 125.0
    assert "cooling" in temp.remedy


def test_near_an_enabled_shutdown_point_is_a_problem(roots) -> None:
    _pcie(*roots, temp=106000)
    _trips(roots[0], warn2=110000, warn2_en="1")
    temp = _by_check(_run(roots), "temperature", "pci:0")
    assert temp.status == fnd.PROBLEM and "shuts down at 110 °C" in temp.message
    assert temp.details["shutdown_celsius"] == 110.0


def test_close_to_throttling_warns_and_cool_is_ok(roots) -> None:
    _pcie(*roots, temp=81000)
    _trips(roots[0])
    assert "within 5 °C of throttling" in _by_check(_run(roots), "temperature", "pci:0").message
    (roots[0] / "class/apex/apex_0/temp").write_text("52750\n")
    cool = _by_check(_run(roots), "temperature", "pci:0")
    assert cool.status == fnd.OK and cool.remedy is None and cool.message.startswith("52.8 °C")


def test_without_trip_point_files_the_driver_defaults_stand_in(roots) -> None:
    _pcie(*roots, temp=86000)
    temp = _by_check(_run(roots), "temperature", "pci:0")
    assert temp.status == fnd.WARNING and temp.details["trips_from"] == "defaults"
    assert temp.details["throttle_celsius"] == [85.0, 90.0, 95.0] and temp.details["clock_mhz"] == 250.0


def test_tpu_findings_are_the_link_and_the_temperature(roots) -> None:
    _usb(*roots, "2-1", ("18d1", "9302"), "480")
    _pcie(*roots, temp=91200)
    checks = {(f.check, f.tpu): f.status for t in list_edge_tpus(*roots) for f in hw.tpu_findings(t)}
    assert checks == {("temperature", "pci:0"): fnd.WARNING, ("usb-link", "usb:0"): fnd.WARNING}


# --------------------------------------------------------------------------- the report


def test_no_tpu_is_a_warning_that_says_where_it_looked(roots) -> None:
    found = _run(roots)
    first = found[0]
    assert first.check == "edgetpu-found" and first.status == fnd.WARNING
    assert str(roots[0] / "bus/usb/devices") in first.message and "apex_*" in first.message
    assert fnd.exit_code(found) == 0


def test_report_text_json_and_exit_status(roots) -> None:
    _usb(*roots, "2-1", ("18d1", "9302"), "480")
    found = _run(roots)
    text = fnd.render_text(found)
    assert "[WARN] usb-link usb:0: on a USB 2 link" in text and "\n       -> plug it into a USB 3 port" in text
    assert "[FAIL] device-node usb:0:" in text
    assert text.splitlines()[-1] == f"{len(found)} checks: 1 problem, 1 warning"
    data = json.loads(fnd.render_json(found))
    assert data["status"] == fnd.PROBLEM
    assert [fnd.Finding(**d) for d in data["findings"]] == found
    assert fnd.exit_code(found) == 1


def test_unknown_status_is_refused() -> None:
    with pytest.raises(ValueError):
        fnd.Finding("x", "fine", "?")


def test_this_machine_runs_every_board_check() -> None:
    root = hw.lookup_user("root", "the current user")
    found = hw.hardware_findings(root)
    checks = [f.check for f in found]
    assert checks[:3] == ["edgetpu-found", "apex-driver", "kernel"]
    assert f"{os.sysconf('SC_PAGE_SIZE') // 1024} KiB pages" in _by_check(found, "kernel").message


# --------------------------------------------------------------------------- Raspberry Pi 5: config.txt, kernel log

PI5 = "Raspberry Pi 5 Model B Rev 1.0"
# /dev/kmsg records as the kernel gives them: "prio,seq,usec,flags;message", dictionary lines indented
KMSG = (
    "6,812,2310442,-;gasket: module verification failed: signature and/or required key missing\n"
    "6,813,2311873,-;apex 0000:01:00.0: enabling device (0000 -> 0002)\n"
    " SUBSYSTEM=pci\n"
    " DEVICE=+pci:0000:01:00.0\n"
    "4,814,2312001,-;usb 3-1: new SuperSpeed USB device number 2 using xhci-hcd\n"
    "3,815,2312514,-;apex 0000:01:00.0: Couldn't initialize interrupts: -28\n"
)


def _boot(roots: tuple[Path, Path], text: str, name: str = "firmware/config.txt") -> Path:
    path = roots[0].parent / "boot" / name
    _write(path, text)
    return path


def _unbound_pcie(roots: tuple[Path, Path]) -> None:
    """A Coral PCIe function with gasket and apex loaded whose probe failed: no driver bound, no node."""
    _pcie(*roots, node=False, module=False)
    for m in ("gasket", "apex"):
        (roots[0] / "module" / m).mkdir(parents=True)


def test_pi5_driver_failure_shows_the_kernels_words_and_the_msi_overlay(roots) -> None:
    _unbound_pcie(roots)
    _write(roots[1] / "kmsg", KMSG)
    _boot(roots, "dtparam=pciex1\n")
    found = _run(roots, page=16384, model=PI5)
    driver = _by_check(found, "apex-driver")
    assert driver.status == fnd.PROBLEM
    assert driver.message.endswith("the kernel said: apex 0000:01:00.0: Couldn't initialize interrupts: -28")
    assert "dtoverlay=pciex1-compat-pi5,no-mip" in driver.remedy and "pineboards-hat-ai" in driver.remedy
    assert driver.details["kernel_log"] == [
        "gasket: module verification failed: signature and/or required key missing",
        "apex 0000:01:00.0: enabling device (0000 -> 0002)",
        "apex 0000:01:00.0: Couldn't initialize interrupts: -28",
    ]
    boot = _by_check(found, "boot-config")
    assert boot.status == fnd.PROBLEM
    assert "`kernel=kernel8.img` (it boots kernel_2712.img, 16 KiB pages)" in boot.message
    assert "an MSI overlay" in boot.message and "config.txt" in boot.remedy


def test_the_same_failure_off_a_pi5_keeps_the_generic_remedy_and_no_boot_check(roots) -> None:
    _unbound_pcie(roots)
    _write(roots[1] / "kmsg", KMSG)
    found = _run(roots)
    driver = _by_check(found, "apex-driver")
    assert "the kernel said: apex 0000:01:00.0: Couldn't initialize interrupts" in driver.message
    assert "pciex1-compat-pi5" not in driver.remedy and "dmesg" in driver.remedy
    assert not [f for f in found if f.check == "boot-config"]


def test_no_kernel_log_device_leaves_the_finding_as_it_was(roots) -> None:
    _unbound_pcie(roots)
    driver = _by_check(_run(roots), "apex-driver")
    assert "the kernel said" not in driver.message and driver.details["kernel_log"] == []


def test_pi5_with_a_working_coral_reads_its_settings_as_ok(roots) -> None:
    _pcie(*roots)
    _boot(roots, "[all]\nkernel=kernel8.img\ndtparam=pciex1\ndtoverlay=pciex1-compat-pi5,no-mip\n")
    boot = _by_check(_run(roots, model=PI5), "boot-config")
    assert boot.status == fnd.OK
    assert boot.message.endswith("config.txt: kernel=kernel8.img (4 KiB pages), dtoverlay=pciex1-compat-pi5,no-mip")


def test_pi5_without_any_tpu_and_pcie_off_says_dtparam_pciex1(roots) -> None:
    _boot(roots, "# dtparam=pciex1\ndtparam=audio=on\n")
    boot = _by_check(_run(roots, model=PI5), "boot-config")
    assert boot.status == fnd.WARNING and "leaves the external PCIe connector off" in boot.message
    assert "dtparam=pciex1" in boot.remedy and "HAT+" in boot.remedy


def test_pi5_with_a_usb_tpu_needs_no_pcie(roots) -> None:
    _usb(*roots, "2-1", ("18d1", "9302"), "5000")
    _boot(roots, "", name="config.txt")
    boot = _by_check(_run(roots, model=PI5), "boot-config")
    assert boot.status == fnd.INFO and "nothing a USB Accelerator needs" in boot.message


def test_pi5_with_pcie_on_and_no_coral_says_to_check_the_cable(roots) -> None:
    _boot(roots, "dtparam=nvme\n")
    boot = _by_check(_run(roots, model=PI5), "boot-config")
    assert boot.status == fnd.WARNING and "no Coral is on it" in boot.message and "ribbon cable" in boot.remedy


def test_pi5_without_config_txt_says_what_was_not_checked(roots) -> None:
    boot = _by_check(_run(roots, model=PI5), "boot-config")
    assert boot.status == fnd.INFO and "no config.txt" in boot.message


@pytest.mark.parametrize(
    ("model", "text", "expected"),
    [
        # another board's section does not apply; [all] ends it; [pi5] applies; the last assignment wins
        (
            PI5,
            "[pi4]\nkernel=kernel8.img\n[all]\ndtparam=pciex1\n[pi5]\ndtoverlay=pineboards-hat-ai\n",
            (None, True, "pineboards-hat-ai"),
        ),
        (PI5, "dtparam=audio=on,pciex1\ndtparam=pciex1=off\n", (None, False, None)),
        # [none] and [tryboot] are off; a compat overlay without no-mip does not move the MSI parent
        (
            PI5,
            "[none]\nkernel=kernel8.img\n[all]\n[tryboot]\ndtparam=pciex1\n[all]\ndtoverlay=pciex1-compat-pi5\n",
            (None, False, None),
        ),
        # a CM5: [cm5] applies, [pi500] does not; include files are read where they are written
        (
            "Raspberry Pi Compute Module 5 Rev 1.0",
            "[cm5]\ninclude extra.txt\n[pi500]\nkernel=x.img\n",
            ("kernel8.img", True, None),
        ),
    ],
)
def test_config_txt_is_read_as_the_firmware_applies_it(tmp_path, model, text, expected) -> None:
    path = tmp_path / "config.txt"
    path.write_text(text)
    (tmp_path / "extra.txt").write_text("kernel=kernel8.img  # 4 KiB pages\ndtparam=pciex1=on\n")
    cfg = brd.parse_config(path, model)
    assert (cfg.kernel, cfg.pciex1, cfg.msi) == expected


# --------------------------------------------------------------------------- who holds the TPU open


def test_a_tpu_held_by_another_program_names_it_and_says_one_process_at_a_time(roots) -> None:
    _usb(*roots, "2-1", ("18d1", "9302"), "5000")
    node = roots[1] / "bus" / "usb" / "002" / "003"
    node.unlink()
    _node(node, numbers=(1, 3))
    holder = hold(node)
    try:
        used = _by_check(_run(roots), "in-use", "usb:0")
    finally:
        holder.kill()
        holder.wait()
    assert used.status == fnd.WARNING
    assert f"in use by pid {holder.pid} (sleep)" in used.message and "one process at a time" in used.message
    assert "Frigate" in used.remedy
    assert used.details["holders"] == [{"pid": holder.pid, "name": "sleep", "edged": False}]
    assert _by_check(_run(roots), "in-use", "usb:0").status == fnd.OK  # let go: free again


def test_a_tpu_held_by_a_running_edged_is_information_and_names_the_stop(roots) -> None:
    _pcie(*roots, node=False)
    _node(roots[1] / "apex_0", gid=0, numbers=(1, 3))
    holder = hold(roots[1] / "apex_0", argv0="edged")
    try:
        found = hw.hardware_findings(EDGED, hw.Host("6.1", 4096, None), *roots)
    finally:
        holder.kill()
        holder.wait()
    used = _by_check(found, "in-use", "pci:0")
    assert used.status == fnd.INFO and used.message.startswith(f"in use by edged, pid {holder.pid} (sleep)")
    assert "systemctl stop edged" in used.remedy


def test_holders_of_a_node_nobody_opened_are_none(tmp_path) -> None:
    from edged.doctor.holders import holders

    (tmp_path / "node").write_text("")
    assert holders(tmp_path / "node") == []
    assert holders(tmp_path / "node", proc_root=tmp_path / "no-proc") == []
