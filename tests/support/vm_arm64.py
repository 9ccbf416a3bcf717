"""The arm64 guest's image (Debian bookworm arm64, the base of Raspberry Pi OS 64-bit), built on an
x86-64 host without running one arm64 program.

Debootstrap's second stage would run every package's maintainer scripts in the guest: under
QEMU's software emulation that had not finished after 40 minutes here (it spends them in the
kernel's initramfs and in dpkg). So the image is made on the host instead:

1. ``debootstrap --foreign`` downloads the packages (the same list as the amd64 guests, the
   arm64 kernel and busybox-static) and unpacks the essential ones;
2. every downloaded package is unpacked natively (``dpkg-deb --fsys-tarfile | tar``), in 10 s;
3. what the packages' maintainer scripts would do for a system that boots, logs in over SSH and
   runs Python is done by hand: the users and groups from base-passwd's master files (the system
   users of systemd and dbus are made by systemd-sysusers at the first boot, the linker cache
   by ldconfig.service), the sshd user and host keys, the PAM stack ``pam-auth-update`` writes,
   awk's alternative, the CA bundle, the units enabled (``systemctl --root preset-all``),
   ``depmod``;
4. a first-boot initramfs: busybox, the modules that mount the root (virtio PCI and block,
   ext4) and an /init that switches to it.

dpkg's database is left empty (no package is configured; ``apt-get`` would reinstall them): the
guest proves the arm64 install and the unit, not Debian's packaging. The build takes about a
minute; the guest boots to systemd in about a minute of emulation.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from . import vm

EXTRA = ("busybox-static",)  # the initramfs's shell and insmod
INITRAMFS_MODULES = (
    "virtio_pci_legacy_dev", "virtio_pci_modern_dev", "virtio_pci", "virtio_blk",
    "crc16", "mbcache", "jbd2", "crc32c_generic", "libcrc32c", "ext4",
)  # fmt: skip
PAM = {  # pam-auth-update's result with the unix and systemd profiles
    "common-auth": ["auth [success=1 default=ignore] pam_unix.so nullok", "auth requisite pam_deny.so",
                    "auth required pam_permit.so"],
    "common-account": ["account [success=1 new_authtok_reqd=done default=ignore] pam_unix.so",
                       "account requisite pam_deny.so", "account required pam_permit.so"],
    "common-password": ["password [success=1 default=ignore] pam_unix.so obscure yescrypt",
                        "password requisite pam_deny.so", "password required pam_permit.so"],
    "common-session-noninteractive": ["session [default=1] pam_permit.so", "session requisite pam_deny.so",
                                      "session required pam_permit.so", "session required pam_unix.so"],
}  # fmt: skip
PAM["common-session"] = [*PAM["common-session-noninteractive"], "session optional pam_systemd.so"]
INIT = """#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in $(cat /modules/order); do insmod /modules/$m.ko 2>/dev/null; done
for i in $(seq 100); do [ -b /dev/vda ] && break; sleep 0.1; done
mount -t ext4 -o rw /dev/vda /newroot || { echo "initramfs: cannot mount /dev/vda"; exec sh; }
umount /proc /sys; mount --move /dev /newroot/dev
exec switch_root /newroot /sbin/init
"""


def build(spec: vm.Spec, folder: Path, pubkey: str, log: Path) -> None:
    work = folder.with_name(folder.name + ".work")
    shutil.rmtree(work, ignore_errors=True)
    rootfs = work / "rootfs"
    rootfs.mkdir(parents=True)
    include = ",".join([*vm.PACKAGES, vm.KERNEL[spec.arch], *EXTRA])
    vm.run_logged(
        ["debootstrap", "--foreign", "--variant=minbase", f"--include={include}", f"--arch={spec.arch}",
         spec.suite, str(rootfs), vm.MIRROR],
        log, timeout=1200,
    )  # fmt: skip
    unpack_all(rootfs, log)
    configure_packages(rootfs)
    vm.configure_rootfs(rootfs, pubkey)
    vm.add_wheels(rootfs, vm.wheelhouse(spec, log))
    folder.mkdir(parents=True, exist_ok=True)
    kernel = sorted(p.name[len("vmlinuz-") :] for p in (rootfs / "boot").glob("vmlinuz-*"))[-1]
    vm.run_logged(["depmod", "-b", str(rootfs), kernel], log, timeout=300)
    shutil.copyfile(rootfs / "boot" / f"vmlinuz-{kernel}", folder / "vmlinuz")
    make_initramfs(rootfs, kernel, work / "initramfs", folder / "initrd.img")
    vm.make_disk(rootfs, folder / "disk.raw", log)
    shutil.rmtree(work, ignore_errors=True)


def unpack_all(rootfs: Path, log: Path) -> None:
    """Every package debootstrap downloaded, unpacked into ``rootfs`` (keeping the /usr-merge links)."""
    debs = sorted((rootfs / "var/cache/apt/archives").glob("*.deb"))
    if not debs:
        raise RuntimeError(f"debootstrap left no packages in {rootfs}/var/cache/apt/archives")
    for deb in debs:
        script = f"dpkg-deb --fsys-tarfile {deb} | tar -x --keep-directory-symlink -C {rootfs}"
        vm.run_logged(["sh", "-ec", script], log, timeout=300)
    proc = rootfs / "proc"
    if proc.is_symlink():  # debootstrap's first stage links it to the host's
        proc.unlink()
        proc.mkdir()
    shutil.rmtree(rootfs / "debootstrap", ignore_errors=True)


def configure_packages(root: Path) -> None:
    """What the maintainer scripts of the packages would have done, as far as booting, SSH and Python need."""
    etc = root / "etc"
    passwd = (root / "usr/share/base-passwd/passwd.master").read_text()
    passwd += "sshd:x:100:65534::/run/sshd:/usr/sbin/nologin\n"
    (etc / "passwd").write_text(passwd)
    group = (root / "usr/share/base-passwd/group.master").read_text()
    (etc / "group").write_text(group)
    users = [ln.split(":")[0] for ln in passwd.splitlines() if ln]
    groups = [ln.split(":")[0] for ln in group.splitlines() if ln]
    (etc / "shadow").write_text("".join(f"{u}:*:19000:0:99999:7:::\n" for u in users))
    (etc / "gshadow").write_text("".join(f"{g}:*::\n" for g in groups))
    os.chmod(etc / "shadow", 0o640)
    os.chmod(etc / "gshadow", 0o640)
    (etc / "machine-id").write_text("")  # made at the first boot
    for name, lines in PAM.items():
        (etc / "pam.d" / name).write_text("".join(ln.replace(" ", "\t", 1) + "\n" for ln in lines))
    sshd_config = etc / "ssh/sshd_config"
    if not sshd_config.exists():
        shutil.copyfile(root / "usr/share/openssh/sshd_config", sshd_config)
    subprocess.run(["ssh-keygen", "-q", "-A", "-f", str(root)], check=True)
    (etc / "alternatives").mkdir(exist_ok=True)
    _link(etc / "alternatives/awk", "/usr/bin/mawk")
    _link(root / "usr/bin/awk", "/etc/alternatives/awk")
    shutil.copyfile("/etc/ssl/certs/ca-certificates.crt", etc / "ssl/certs/ca-certificates.crt")
    # the units enabled as Debian's presets say (enable-all); its SysV step fails (an arm64 chroot): not needed
    subprocess.run(["systemctl", f"--root={root}", "preset-all"], capture_output=True, check=False)
    if not (etc / "systemd/system/multi-user.target.wants/ssh.service").is_symlink():
        raise RuntimeError(f"systemctl --root={root} preset-all did not enable ssh.service")


def _link(path: Path, target: str) -> None:
    if path.is_symlink() or path.exists():
        path.unlink()
    path.symlink_to(target)


def make_initramfs(root: Path, kernel: str, work: Path, out: Path) -> None:
    shutil.rmtree(work, ignore_errors=True)
    for d in ("bin", "dev", "proc", "sys", "newroot", "modules"):
        (work / d).mkdir(parents=True)
    shutil.copyfile(root / "bin/busybox", work / "bin/busybox")
    os.chmod(work / "bin/busybox", 0o755)
    order = []
    for name in INITRAMFS_MODULES:
        found = sorted((root / "lib/modules" / kernel).rglob(f"{name}.ko"))
        if found:
            shutil.copyfile(found[0], work / "modules" / f"{name}.ko")
            order.append(name)
    if "virtio_blk" not in order or "ext4" not in order:
        raise RuntimeError(f"the kernel {kernel} has no virtio_blk or ext4 module (found {order})")
    (work / "modules/order").write_text("\n".join(order) + "\n")
    (work / "init").write_text(INIT)
    os.chmod(work / "init", 0o755)
    with open(out, "wb") as f:
        find = subprocess.Popen(["find", "."], cwd=work, stdout=subprocess.PIPE)
        cpio = subprocess.Popen(["cpio", "-o", "-H", "newc", "--quiet"], cwd=work, stdin=find.stdout,
                                stdout=subprocess.PIPE)  # fmt: skip
        subprocess.run(["gzip", "-1"], stdin=cpio.stdout, stdout=f, check=True)
        if find.wait() or cpio.wait():
            raise RuntimeError("cpio could not pack the initramfs")
