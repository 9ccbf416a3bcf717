"""Real Debian systems for the system tests: built from Debian's archive, booted with QEMU.

A guest is a root file system made by ``debootstrap`` from Debian's archive (minbase, with
systemd as init, Python, the kernel, OpenSSH), written to an ext4 disk image with
``mkfs.ext4 -d``, and booted by ``qemu-system-x86_64`` in software
emulation (a KVM guest hangs here: no nested virtualisation) with Debian's own kernel and
initramfs. systemd is PID 1. The tests reach the guest over SSH (a key made for the cache, the
guest's port 22 forwarded to a loopback port) and its serial console is kept in a log.

Images are cached outside the repository, in ``$EDGED_CACHE/vm`` (default ``~/.cache/edged/vm``),
each under a name that carries its recipe's digest, so a changed recipe builds a new image; a
missing one is built (under a lock: two test runs never build the same image at once). Each boot
runs on a throw-away qcow2 overlay, so every test module starts from the image as built.

The amd64 root file systems are built natively (debootstrap, and the kernel's initramfs made
in the chroot) and booted by ``qemu-system-x86_64``. The arm64 one (bookworm, the base of
Raspberry Pi OS 64-bit) is built on the host without running an arm64 program
(:mod:`support.vm_arm64`: debootstrap's second stage would run emulated, over 40 minutes) and
booted by ``qemu-system-aarch64`` on QEMU's virt board with Cortex-A72 cores.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import pytest

from .tools import require_tool

ROOT = Path(__file__).resolve().parent.parent.parent
MIRROR = os.environ.get("EDGED_DEBIAN_MIRROR", "http://deb.debian.org/debian")
# what the guests have besides minbase: what Debian and Raspberry Pi OS installs have
PACKAGES = (
    "systemd-sysv",
    "udev",
    "dbus",
    "python3",
    "python3-venv",
    "openssh-server",
    "iproute2",
    "procps",
    "ca-certificates",
    "kmod",
)
KERNEL = {"amd64": "linux-image-amd64", "arm64": "linux-image-arm64"}
MACHINE = {"amd64": "x86_64", "arm64": "aarch64"}  # the kernel's (uname -m) and the wheels' name
HOSTNAME = "edged-guest"
PYTHON = {"bookworm": "3.11", "trixie": "3.13"}  # Debian's python3 of each release
WHEELS = "/var/cache/edged-wheels"  # in the guest: PyPI's wheels of edged's dependencies
RECIPE_VERSION = "1"  # bump to rebuild every image after a change of configure_rootfs()


@dataclass(frozen=True)
class Spec:
    """A guest: Debian ``suite`` on ``arch``."""

    suite: str
    arch: str

    @property
    def name(self) -> str:
        return f"{self.suite}-{self.arch}"

    def __str__(self) -> str:
        return self.name

    def digest(self) -> str:
        """The recipe's digest: the packages and the functions that build (not those that boot)."""
        import inspect

        from . import vm_arm64

        builders = [configure_rootfs, trust_host_cas, add_wheels, wheelhouse, make_disk, take_kernel, build_native]
        recipe = [RECIPE_VERSION, self.suite, self.arch, MIRROR, *PACKAGES, KERNEL[self.arch]]
        recipe += [inspect.getsource(b) for b in builders]  # type: ignore[arg-type]
        if self.arch != "amd64":
            recipe.append(inspect.getsource(vm_arm64))
        return hashlib.sha256("\n".join(recipe).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Image:
    """A built guest: its disk (raw ext4), kernel and initramfs, and the key that logs in."""

    spec: Spec
    folder: Path
    key: Path

    @property
    def disk(self) -> Path:
        return self.folder / "disk.raw"

    @property
    def kernel(self) -> Path:
        return self.folder / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.folder / "initrd.img"


def cache_dir() -> Path:
    base = Path(os.environ.get("EDGED_CACHE") or Path.home() / ".cache" / "edged")
    path = base / "vm"
    path.mkdir(parents=True, exist_ok=True)
    return path


def ssh_key() -> Path:
    """The cache's SSH key (made once); its public half is in every image's authorized_keys."""
    key = cache_dir() / "id_ed25519"
    with _locked(cache_dir() / "key.lock"):
        if not key.exists():
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "edged-tests", "-f", str(key)], check=True
            )
    return key


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def need_tools(arch: str) -> None:
    """Skip without the host programs (fail with EDGED_REQUIRE_TOOLS=1): deploy/test-tools.sh installs them."""
    require_tool("debootstrap", "debootstrap")
    require_tool("mkfs.ext4", "e2fsprogs")
    require_tool("qemu-img", "qemu-utils")
    require_tool("ssh", "openssh-client")
    if arch == "amd64":
        require_tool("qemu-system-x86_64", "qemu-system-x86")
    else:  # built on the host without an arm64 program (support.vm_arm64)
        require_tool("qemu-system-aarch64", "qemu-system-arm")
        require_tool("cpio", "cpio")
        require_tool("depmod", "kmod")
    if os.geteuid() != 0:
        why = "building a guest's root file system (debootstrap, chroot) needs root"
        if os.environ.get("EDGED_REQUIRE_TOOLS") == "1":
            pytest.fail(f"{why} and EDGED_REQUIRE_TOOLS=1")
        pytest.skip(why)


def image(spec: Spec, log: Optional[Path] = None) -> Image:
    """The cached image of ``spec``, built first when missing (minutes: see the build log)."""
    need_tools(spec.arch)
    key = ssh_key()
    folder = cache_dir() / f"{spec.name}-{spec.digest()}"
    with _locked(cache_dir() / f"{spec.name}.lock"):
        if not (folder / "built").exists():
            for old in cache_dir().glob(f"{spec.name}-*"):  # an earlier recipe's image
                if old.is_dir():
                    shutil.rmtree(old, ignore_errors=True)
            log = log or cache_dir() / f"{spec.name}.build.log"
            started = time.monotonic()
            if spec.arch == "amd64":
                build_native(spec, folder, key.with_suffix(".pub").read_text(), log)
            else:
                from . import vm_arm64

                vm_arm64.build(spec, folder, key.with_suffix(".pub").read_text(), log)
            (folder / "built").write_text(f"{time.monotonic() - started:.0f}\n")
    return Image(spec, folder, key)


def run_logged(cmd: list[str], log: Path, timeout: float, **kwargs) -> None:
    """Run ``cmd`` with its output appended to ``log``; fail with the log's tail."""
    with open(log, "a") as out:
        out.write(f"\n$ {shlex.join(cmd)}\n")
        out.flush()
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, timeout=timeout, **kwargs)
    if proc.returncode != 0:
        tail = "".join(log.read_text(errors="replace").splitlines(True)[-30:])
        raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}); the end of {log}:\n{tail}")


def configure_rootfs(root: Path, pubkey: str) -> None:
    """What an installed Debian has that debootstrap leaves out: a host name, the root file
    system in fstab, DHCP on the first Ethernet port (systemd-networkd), a resolver, the archive
    in apt's sources, root's SSH key; no password login."""
    (root / "etc/hostname").write_text(HOSTNAME + "\n")
    (root / "etc/hosts").write_text(f"127.0.0.1 localhost\n127.0.1.1 {HOSTNAME}\n::1 localhost ip6-localhost\n")
    (root / "etc/fstab").write_text("/dev/vda / ext4 defaults,errors=remount-ro 0 1\n")
    network = root / "etc/systemd/network/10-eth.network"
    network.parent.mkdir(parents=True, exist_ok=True)
    network.write_text("[Match]\nName=eth0\n\n[Network]\nDHCP=ipv4\n")
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    link = wants / "systemd-networkd.service"
    if not link.exists():
        link.symlink_to("/lib/systemd/system/systemd-networkd.service")
    resolv = root / "etc/resolv.conf"
    if resolv.is_symlink() or resolv.exists():
        resolv.unlink()
    resolv.write_text("nameserver 10.0.2.3\n")  # QEMU's user-mode network's resolver
    (root / "etc/apt/sources.list").write_text(f"deb {MIRROR} {_suite_of(root)} main\n")
    ssh = root / "root/.ssh"
    ssh.mkdir(mode=0o700, parents=True, exist_ok=True)
    (ssh / "authorized_keys").write_text(pubkey)
    os.chmod(ssh / "authorized_keys", 0o600)
    trust_host_cas(root)
    # the journal kept on disk, as on an installed system (minbase has no /var/log/journal)
    (root / "var/log/journal").mkdir(parents=True, exist_ok=True)


def trust_host_cas(root: Path) -> None:
    """The host's own certificate authorities (a site's TLS proxy to PyPI), trusted in the guest too,
    by its system store and by pip (which otherwise trusts only its own bundle)."""
    local = Path("/usr/local/share/ca-certificates")
    extra = sorted(local.glob("*.crt")) if local.is_dir() else []
    if not extra:
        return
    dest = root / "usr/local/share/ca-certificates"
    dest.mkdir(parents=True, exist_ok=True)
    bundle = root / "etc/ssl/certs/ca-certificates.crt"
    with open(bundle, "a") as out:
        for crt in extra:
            shutil.copyfile(crt, dest / crt.name)
            out.write("\n" + crt.read_text())
    (root / "etc/pip.conf").write_text("[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n")


def wheelhouse(spec: Spec, log: Path) -> Path:
    """PyPI's wheels of edged's dependencies (and of its build) for the guest's Python and machine,
    downloaded once on the host (cached): put in the image, so that each install in a guest does not
    fetch 120 MB again through QEMU's user network (slow under emulation); pip in the guest still
    resolves against PyPI and takes a newer release from there."""
    import tomllib

    py = PYTHON[spec.suite]
    machine = MACHINE[spec.arch]
    folder = cache_dir() / f"wheels-cp{py.replace('.', '')}-{machine}"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    wanted = [*project["build-system"]["requires"], *project["project"]["dependencies"]]
    with _locked(cache_dir() / f"{folder.name}.lock"):
        if (folder / "done").exists():
            return folder
        platforms = [f"manylinux_2_{n}_{machine}" for n in range(17, 37)] + [f"manylinux2014_{machine}"]
        cmd = [sys.executable, "-m", "pip", "download", "--isolated", "--quiet", "--disable-pip-version-check",
               "--only-binary=:all:", "--python-version", py, "--implementation", "cp",
               *(a for p in platforms for a in ("--platform", p)), "--dest", str(folder), *wanted]  # fmt: skip
        if os.path.exists(ca := "/etc/ssl/certs/ca-certificates.crt"):
            cmd[4:4] = ["--cert", ca]
        run_logged(cmd, log, timeout=900)
        (folder / "done").write_text(" ".join(wanted) + "\n")
    return folder


def add_wheels(root: Path, wheels: Path) -> None:
    """The wheelhouse in the guest, where pip looks first (``find-links`` in /etc/pip.conf)."""
    dest = root / WHEELS.lstrip("/")
    shutil.copytree(wheels, dest, dirs_exist_ok=True)
    conf = root / "etc/pip.conf"
    text = conf.read_text() if conf.exists() else "[global]\n"
    conf.write_text(text + f"find-links = {WHEELS}\n")


def _suite_of(root: Path) -> str:
    text = (root / "etc/os-release").read_text()
    for line in text.splitlines():
        if line.startswith("VERSION_CODENAME="):
            return line.split("=", 1)[1].strip('"') or "bookworm"
    return "trixie"  # testing has no codename in os-release until released; trixie is released


def build_native(spec: Spec, folder: Path, pubkey: str, log: Path) -> None:
    """amd64: debootstrap with the kernel included (its initramfs made in the chroot), then the disk."""
    work = folder.with_name(folder.name + ".work")
    shutil.rmtree(work, ignore_errors=True)
    rootfs = work / "rootfs"
    rootfs.mkdir(parents=True)
    include = ",".join([*PACKAGES, KERNEL[spec.arch]])
    run_logged(
        [
            "debootstrap",
            "--variant=minbase",
            f"--include={include}",
            f"--arch={spec.arch}",
            spec.suite,
            str(rootfs),
            MIRROR,
        ],
        log,
        timeout=1200,
    )
    configure_rootfs(rootfs, pubkey)
    add_wheels(rootfs, wheelhouse(spec, log))
    folder.mkdir(parents=True, exist_ok=True)
    take_kernel(rootfs, folder)
    make_disk(rootfs, folder / "disk.raw", log)
    shutil.rmtree(work, ignore_errors=True)


def take_kernel(rootfs: Path, folder: Path) -> None:
    """The newest kernel and initramfs of the root file system, copied beside the disk."""
    boot = rootfs / "boot"
    versions = sorted(
        p.name[len("vmlinuz-") :] for p in boot.glob("vmlinuz-*") if (boot / f"initrd.img-{p.name[8:]}").exists()
    )
    if not versions:
        raise RuntimeError(f"no kernel with its initramfs in {boot}: {sorted(os.listdir(boot))}")
    shutil.copyfile(boot / f"vmlinuz-{versions[-1]}", folder / "vmlinuz")
    shutil.copyfile(boot / f"initrd.img-{versions[-1]}", folder / "initrd.img")


def make_disk(rootfs: Path, disk: Path, log: Path, size: str = "8G") -> None:
    """An ext4 image holding ``rootfs`` (sparse: only what is written takes space)."""
    run_logged(
        ["mkfs.ext4", "-q", "-F", "-L", "root", "-E", "root_owner=0:0", "-d", str(rootfs), str(disk), size], log, 600
    )
