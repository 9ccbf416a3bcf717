"""deploy/: the install and uninstall scripts, the udev rules and the Ansible role.

The scripts run with ``--root`` into a temporary directory, so nothing on the machine changes;
most use ``--skip-venv --python <this interpreter>`` to stay fast, one builds the real venv.
shellcheck and ansible-playbook are needed: without them these tests skip, or fail with
EDGED_REQUIRE_TOOLS=1 (CI). ansible-lint is used where it is installed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.system  # every test runs a script or a tool (bash, shellcheck, ansible)


ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
INSTALL = DEPLOY / "install.sh"
UNINSTALL = DEPLOY / "uninstall.sh"
ANSIBLE = DEPLOY / "ansible"
ROLE = ANSIBLE / "roles" / "edged"
INVENTORY = ANSIBLE / "inventory.example"

BOOKWORM = 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\nVERSION_CODENAME=bookworm\n'


def os_release(pretty: str, id_: str, codename: str) -> str:
    return f'PRETTY_NAME="{pretty}"\nID={id_}\nVERSION_CODENAME={codename}\n'


def tool(name: str) -> str:
    """A program beside this interpreter (the test venv's) or on PATH; skip or fail without it."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found:
        return found
    hint = {"shellcheck": "apt-get install shellcheck", "ansible-playbook": "pip install ansible-core"}.get(name, "")
    if os.environ.get("EDGED_REQUIRE_TOOLS") == "1":
        pytest.fail(f"{name} is not installed ({hint}) and EDGED_REQUIRE_TOOLS=1")
    pytest.skip(f"{name} is not installed ({hint})")


# what the installer and the installed edged see: not the test run's runtime choice (CI's
# second pass sets EDGED_RUNTIME=tflite_runtime, which a fresh default install does not have)
BASE_ENV = {k: v for k, v in os.environ.items() if k != "EDGED_RUNTIME"}


def run(cmd: list, env: dict | None = None, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, env={**BASE_ENV, **(env or {})}, **kw
    )


def install(root: Path, *args: str, release: str = BOOKWORM, arch: str = "amd64", venv: bool = False, tmp: Path):
    osr = tmp / f"os-release-{hashlib.sha1(release.encode()).hexdigest()[:8]}"
    osr.write_text(release)
    extra = [] if venv else ["--skip-venv", "--python", sys.executable]
    return run(
        ["bash", INSTALL, "--root", root, *extra, *args],
        env={"EDGED_OS_RELEASE": str(osr), "EDGED_DPKG_ARCH": arch},
        timeout=600,
    )


def ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc.stdout


def tree(root: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """Every file and symlink under root with its mode and content hash (or link target)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if rel in skip:
            continue
        if p.is_symlink():
            out[rel] = "-> " + os.readlink(p)
        elif p.is_file():
            out[rel] = f"{oct(p.stat().st_mode & 0o7777)} {hashlib.sha256(p.read_bytes()).hexdigest()}"
        else:
            out[rel] = f"{oct(p.stat().st_mode & 0o7777)} dir"
    return out


# --------------------------------------------------------------------------- shell scripts


def test_scripts_are_shellcheck_clean() -> None:
    shellcheck = tool("shellcheck")
    scripts = sorted(DEPLOY.rglob("*.sh"))
    assert INSTALL in scripts and UNINSTALL in scripts
    proc = run([shellcheck, "--severity=style", *scripts])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_install_tree(tmp_path: Path) -> None:
    root = tmp_path / "root"
    out = ok(install(root, "--device", "shelf-pi", tmp=tmp_path))
    assert "platform: Debian bookworm amd64" in out

    # the unit, as in the repository, naming what the script installs
    unit = root / "etc/systemd/system/edged.service"
    assert unit.read_bytes() == (ROOT / "systemd/edged.service").read_bytes()
    text = unit.read_text()
    assert re.search(r"^ExecStart=/opt/edged/venv/bin/edged run --config /etc/edged/edged.yaml\s*$", text, re.M), (
        "the unit's ExecStart no longer runs the venv and configuration install.sh makes"
    )
    assert re.search(r"^User=edged\s*$", text, re.M), "the unit's User= is not the user install.sh creates"
    if shutil.which("systemctl"):
        link = root / "etc/systemd/system/multi-user.target.wants/edged.service"
        assert os.readlink(link) == "/etc/systemd/system/edged.service", "not enabled"
    else:
        assert "systemctl not found" in out

    # udev: both USB ids of the accelerator and the PCIe apex devices, group-accessible
    rules = (root / "etc/udev/rules.d/60-edged-coral.rules").read_text()
    active = [line for line in rules.splitlines() if line.strip() and not line.startswith("#")]
    for vendor, product in (("1a6e", "089a"), ("18d1", "9302")):
        (line,) = [r for r in active if f'ATTRS{{idVendor}}=="{vendor}"' in r]
        assert f'ATTRS{{idProduct}}=="{product}"' in line and 'GROUP="plugdev"' in line and 'MODE="0660"' in line
        assert 'SUBSYSTEM=="usb"' in line
    (apex,) = [r for r in active if 'SUBSYSTEM=="apex"' in r]
    assert 'GROUP="apex"' in apex and 'MODE="0660"' in apex and 'KERNEL=="apex_*"' in apex

    # the configuration: the default one with this device's name, private to root and edged
    config = root / "etc/edged/edged.yaml"
    check = run([sys.executable, "-m", "edged", "config", "check", config])
    assert check.returncode == 0, check.stdout + check.stderr
    assert "OK (1 stream)" in check.stdout
    data = yaml.safe_load(config.read_text())
    assert data["device"] == "shelf-pi"
    assert data["streams"][0]["source"]["type"] == "synthetic"
    assert config.stat().st_mode & 0o777 == 0o640
    assert (root / "etc/edged").stat().st_mode & 0o777 == 0o750
    env = root / "etc/edged/edged.env"
    assert env.stat().st_mode & 0o777 == 0o640
    assert re.findall(r"^#?(EDGED_\w+)=", env.read_text(), re.M) == ["EDGED_API_TOKEN", "EDGED_MQTT_PASSWORD"]
    assert (root / "var/lib/edged").is_dir() and (root / "var/lib/edged").stat().st_mode & 0o777 == 0o750
    assert not (root / "opt/edged/venv").exists(), "--skip-venv made a venv"


def test_install_twice_keeps_the_configuration(tmp_path: Path) -> None:
    root = tmp_path / "root"
    ok(install(root, tmp=tmp_path))
    config = root / "etc/edged/edged.yaml"
    edited = config.read_text().replace("hold_frames: 30", "hold_frames: 7") + "# edited by hand\n"
    config.write_text(edited)
    before = tree(root, skip=("etc/edged/edged.yaml",))

    out = ok(install(root, "--device", "another-name", tmp=tmp_path))
    assert f"kept {config}" in out
    assert config.read_text() == edited, "install.sh overwrote an existing configuration"
    assert tree(root, skip=("etc/edged/edged.yaml",)) == before


def test_uninstall_then_purge(tmp_path: Path) -> None:
    root = tmp_path / "root"
    ok(install(root, tmp=tmp_path))
    (root / "opt/edged/venv/bin").mkdir(parents=True)  # stands in for the venv --skip-venv left out
    (root / "var/lib/edged/door.mqtt.sqlite").write_text("queued")

    out = ok(run(["bash", UNINSTALL, "--root", root]))
    assert not (root / "etc/systemd/system/edged.service").exists()
    assert not (root / "etc/systemd/system/multi-user.target.wants/edged.service").is_symlink()
    assert not (root / "etc/udev/rules.d/60-edged-coral.rules").exists()
    assert not (root / "opt/edged").exists()
    assert (root / "etc/edged/edged.yaml").is_file() and (root / "var/lib/edged/door.mqtt.sqlite").is_file()
    assert "--purge removes them" in out

    out = ok(run(["bash", UNINSTALL, "--root", root]))  # again: nothing left to remove, no error
    assert "no unit to remove" in out

    ok(run(["bash", UNINSTALL, "--root", root, "--purge"]))
    assert not (root / "etc/edged").exists() and not (root / "var/lib/edged").exists()
    leftovers = [p for p in root.rglob("*") if not p.is_dir()]
    assert leftovers == [], f"left behind: {leftovers}"


@pytest.mark.parametrize(
    ("release", "arch", "message"),
    [
        (os_release("Ubuntu 24.04 LTS", "ubuntu", "noble"), "amd64", "Ubuntu 24.04 LTS is not supported"),
        (os_release("Raspbian GNU/Linux 12 (bookworm)", "raspbian", "bookworm"), "armhf", "32-bit Raspberry Pi OS"),
        (os_release("Debian GNU/Linux 11 (bullseye)", "debian", "bullseye"), "amd64", "Debian bullseye is not supp"),
        (BOOKWORM, "armhf", "32-bit Debian (armhf) is not supported"),
        (BOOKWORM, "i386", "architecture i386 is not supported"),
    ],
)
def test_install_refuses_an_unsupported_platform(tmp_path: Path, release: str, arch: str, message: str) -> None:
    root = tmp_path / "root"
    proc = install(root, release=release, arch=arch, tmp=tmp_path)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("install.sh: error: "), proc.stderr
    assert message in lines[0] and "--force" in lines[0]
    assert list(root.iterdir()) == [], "install.sh wrote files before refusing"


@pytest.mark.parametrize(("codename", "arch"), [("trixie", "arm64"), ("bookworm", "arm64"), ("trixie", "amd64")])
def test_install_accepts_the_supported_platforms(tmp_path: Path, codename: str, arch: str) -> None:
    release = os_release(f"Debian GNU/Linux ({codename})", "debian", codename)
    out = ok(install(tmp_path / "root", release=release, arch=arch, tmp=tmp_path))
    assert f"platform: Debian {codename} {arch}" in out


def test_install_force_goes_on_with_a_warning(tmp_path: Path) -> None:
    release = os_release("Ubuntu 24.04 LTS", "ubuntu", "noble")
    proc = install(tmp_path / "root", "--force", release=release, tmp=tmp_path)
    ok(proc)
    assert "warning: Ubuntu 24.04 LTS is not supported" in proc.stderr and "--force" in proc.stderr
    assert (tmp_path / "root/etc/edged/edged.yaml").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--device", "door/pi"], "device name 'door/pi' is not usable"),
        (["--bogus"], "unknown option: --bogus"),
        (["--tflite", "--root"], "--root needs a directory"),
    ],
)
def test_install_usage_errors_are_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    proc = install(tmp_path / "root", *args, tmp=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("install.sh: error: "), proc.stderr
    assert message in proc.stderr, proc.stderr
    assert not (tmp_path / "root/etc").exists()


def test_install_with_the_real_venv(tmp_path: Path) -> None:
    """pip installs the checkout (from a copy) into <root>/opt/edged/venv; the config points into it."""
    root = tmp_path / "root"
    out = ok(install(root, "--python", sys.executable, venv=True, tmp=tmp_path))
    venv = root / "opt/edged/venv"
    version = run([venv / "bin/edged", "--version"])
    assert version.returncode == 0 and version.stdout.split()[-1] == __import__("edged").__version__
    config = root / "etc/edged/edged.yaml"
    model = yaml.safe_load(config.read_text())["streams"][0]["model"]["path"]
    assert model.startswith(str(venv)), f"the demo model is not the venv's: {model}"
    check = run([venv / "bin/edged", "config", "check", config])
    assert check.returncode == 0, check.stdout + check.stderr
    assert "installed edged" in out

    # again: the venv is kept and updated, the configuration kept
    out = ok(install(root, "--python", sys.executable, venv=True, tmp=tmp_path))
    assert "created the virtual environment" not in out and f"kept {config}" in out


# --------------------------------------------------------------------------- Ansible


def ansible_env(tmp_path: Path) -> dict[str, str]:
    return {
        "ANSIBLE_HOME": str(tmp_path / "ansible-home"),
        "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-tmp"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_DEPRECATION_WARNINGS": "0",
        "ANSIBLE_PYTHON_INTERPRETER": sys.executable,
    }


def test_ansible_playbook_syntax(tmp_path: Path) -> None:
    playbook = tool("ansible-playbook")
    proc = run([playbook, "--syntax-check", ANSIBLE / "site.yml", "-i", INVENTORY], env=ansible_env(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "playbook: " in proc.stdout


def render(tmp_path: Path, host: str, template: Path) -> str:
    """Render one of the role's templates for a host of the example inventory, as the role would:
    the role's defaults, overridden by the inventory's group and host variables, and its vars."""
    tool("ansible-playbook")
    ansible_inventory, ansible = tool("ansible-inventory"), tool("ansible")
    env = ansible_env(tmp_path)
    proc = run([ansible_inventory, "-i", INVENTORY, "--host", host], env=env)
    assert proc.returncode == 0, proc.stderr
    hostvars = json.loads(proc.stdout)
    defaults = yaml.safe_load((ROLE / "defaults/main.yml").read_text())
    extra = {k: v for k, v in defaults.items() if k not in hostvars}
    extra.update(yaml.safe_load((ROLE / "vars/main.yml").read_text()))  # role vars: above the inventory's
    from edged.config import builtin_model_dir

    extra.update(
        vault_edged_api_token="fleet-token-0123456789",
        vault_edged_mqtt_password="door-password",
        edged_builtin_models=str(builtin_model_dir()),  # the role asks the venv for it
    )
    extra_file = tmp_path / f"extra-{host}.json"
    extra_file.write_text(json.dumps(extra))
    dest = tmp_path / f"{host}-{template.name.removesuffix('.j2')}"
    proc = run(
        [ansible, host, "-i", INVENTORY, "-c", "local", "-m", "ansible.builtin.template"]
        + ["-a", f"src={template} dest={dest}", "-e", f"@{extra_file}"],
        env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return dest.read_text()


def test_ansible_config_template_makes_a_valid_configuration(tmp_path: Path) -> None:
    # a board with the group's settings and the demo stream: the full check, models loaded
    text = render(tmp_path, "door-pi", ROLE / "templates/edged.yaml.j2")
    path = tmp_path / "door-pi.yaml"
    path.write_text(text)
    check = run([sys.executable, "-m", "edged", "config", "check", path])
    assert check.returncode == 0, check.stdout + check.stderr + text
    cfg = yaml.safe_load(text)
    assert cfg["device"] == "door-pi" and cfg["listen"] == "0.0.0.0:9110"
    (stream,) = cfg["streams"]
    assert stream["model"]["path"].endswith("/digits_detector_int8.tflite") and stream["source"]["digits"] == "many"
    assert [s["type"] for s in stream["sinks"]] == ["log", "mqtt"]
    mqtt = stream["sinks"][1]
    assert mqtt["client_id"] == "edged-door-pi" and mqtt["username"] == "door-pi"
    assert mqtt["password_env"] == "EDGED_MQTT_PASSWORD" and mqtt["tls"] is True and mqtt["port"] == 8883
    assert "door-password" not in text and "fleet-token" not in text, "a secret went into edged.yaml"

    env = render(tmp_path, "door-pi", ROLE / "templates/edged.env.j2")
    assert "EDGED_API_TOKEN=fleet-token-0123456789\n" in env and "EDGED_MQTT_PASSWORD=door-password\n" in env

    # a board with its own stream (host_vars): structure only, its models are not here
    text = render(tmp_path, "gate-1", ROLE / "templates/edged.yaml.j2")
    path = tmp_path / "gate-1.yaml"
    path.write_text(text)
    check = run([sys.executable, "-m", "edged", "config", "check", "--no-models", path])
    assert check.returncode == 0, check.stdout + check.stderr + text
    (stream,) = yaml.safe_load(text)["streams"]
    assert stream["id"] == "gate" and stream["model"]["device"] == "usb:0"
    assert stream["sinks"][1]["client_id"] == "edged-gate-1"


def test_ansible_prometheus_targets_template(tmp_path: Path) -> None:
    targets = yaml.safe_load(render(tmp_path, "door-pi", ANSIBLE / "templates/edged-targets.yml.j2"))
    assert targets == [
        {"targets": ["dock-pi.lan:9110"], "labels": {"device": "dock-pi", "site": "warehouse"}},
        {"targets": ["door-pi.lan:9110"], "labels": {"device": "door-pi", "site": "warehouse"}},
        {"targets": ["192.0.2.21:9110"], "labels": {"device": "gate-1", "site": "gate"}},
    ]


def test_ansible_lint(tmp_path: Path) -> None:
    lint = Path(sys.executable).parent / "ansible-lint"
    lint = str(lint) if lint.exists() else shutil.which("ansible-lint")
    if not lint:
        pytest.skip("ansible-lint is not installed (pip install ansible-lint); CI runs the syntax check only")
    proc = run([lint, "--offline", "--nocolor"], env=ansible_env(tmp_path), cwd=ANSIBLE, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _stub_bin(tmp: Path, uid: str, with_apt: bool) -> Path:
    """A PATH of its own: bash and env, an ``id`` saying ``uid``, a recording ``apt-get``; no test tool."""
    bin_ = tmp / "bin"
    bin_.mkdir(parents=True)
    for tool in ("bash", "env"):
        os.symlink(shutil.which(tool), bin_ / tool)
    (bin_ / "id").write_text(f"#!/bin/bash\necho {uid}\n")
    if with_apt:
        (bin_ / "apt-get").write_text(f'#!/bin/bash\necho "$*" >> {tmp}/apt.log\n')
    for f in bin_.iterdir():
        if not f.is_symlink():
            f.chmod(0o755)
    return bin_


def test_the_test_command_installs_the_debian_tools_or_names_them(tmp_path: Path) -> None:
    """bootstrap.sh test runs deploy/test-tools.sh: as root it installs what is missing, once (one
    apt-get install); as a user without sudo it names the packages and lets the tests run."""
    script = DEPLOY / "test-tools.sh"
    root_bin = _stub_bin(tmp_path / "root", "0", with_apt=True)
    env = {"PATH": str(root_bin), "HOME": str(tmp_path)}
    done = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    apt = (tmp_path / "root" / "apt.log").read_text().splitlines()
    assert apt[0] == "update -qq" and apt[1].startswith("install -y -qq --no-install-recommends"), apt
    for package in ("gcc", "libc6-dev", "chromium", "shellcheck", "prometheus"):
        assert f" {package}" in apt[1], apt
    user_bin = _stub_bin(tmp_path / "user", "1000", with_apt=False)
    done = subprocess.run(
        ["bash", str(script)], env={"PATH": str(user_bin)}, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0
    assert "the system tests need Debian packages that are not installed: gcc libc6-dev" in done.stderr
    assert "install them with: sudo apt-get install gcc libc6-dev" in done.stderr and "skip meanwhile" in done.stderr
    assert "\nbash deploy/test-tools.sh\n" in (DEPLOY / "bootstrap.sh").read_text()  # the test command runs it
