"""edged on Debian bookworm arm64 (the base of Raspberry Pi OS 64-bit), in an emulated guest.

The guest (:mod:`support.vm_arm64`) boots Debian's arm64 kernel on QEMU's virt board with
Cortex-A72 cores (a Raspberry Pi 4's) in software emulation, systemd as PID 1. It is slow, so it
proves only what the amd64 guests cannot: deploy/install.sh installs edged with the aarch64 wheels
(ai-edge-litert, numpy, OpenCV), the unit reaches active with READY=1 under its hardening, and the
demo's results reach the journal. The rest of the unit's behaviour is tested in the amd64 guests
(tests/test_vm.py). Its file name sorts before test_vm.py: the guest is powered off after its tests,
so that it does not take the host's cores from the amd64 guests' tests.
"""

from __future__ import annotations

import contextlib
import shlex
import subprocess
from typing import Any, Iterator

import pytest
from support import vm
from support.guest import Guest
from support.wait import wait_for
from test_vm import RESULT, VPY, api, journal, show

pytestmark = [pytest.mark.system, pytest.mark.vm, pytest.mark.timeout(1800)]


@pytest.fixture(scope="module", params=[vm.Spec("bookworm", "arm64")], ids=str)
def guest(request: pytest.FixtureRequest, guest_pool: Any) -> Iterator[Guest]:
    g = guest_pool.get(request.param)
    print(f"{request.param.name}: boot {g.boot_seconds:.0f} s, install.sh {g.install_seconds:.0f} s")
    yield g
    with contextlib.suppress(subprocess.TimeoutExpired, AssertionError):
        g.run("systemctl poweroff", timeout=15, check=False)


def test_install_on_arm64_brings_the_unit_to_active_with_the_aarch64_wheels(guest: Guest) -> None:
    assert guest.run("uname -m").out.strip() == "aarch64"
    assert "platform: Debian bookworm arm64" in guest.install_log and "started edged" in guest.install_log
    props = show(guest, "ActiveState", "SubState", "Type", "NRestarts", "StatusText", "User")
    assert (props["ActiveState"], props["SubState"], props["Type"]) == ("active", "running", "notify"), props
    assert props["NRestarts"] == "0" and props["User"] == "edged", props
    assert "demo" in props["StatusText"] and "fps" in props["StatusText"], props
    code = "import platform, sys, ai_edge_litert, cv2, numpy; print(platform.machine(), *sys.version_info[:2])"
    assert guest.run(f"{VPY} -c {shlex.quote(code)}").out.split() == ["aarch64", "3", "11"]
    stream = next(s for s in api(guest, "/api/v1/status")["streams"] if s["id"] == "demo")
    assert (stream["runtime"], stream["accelerator"], stream["state"]) == ("ai_edge_litert", "cpu", "running"), stream


def test_the_demos_results_reach_the_journal_on_arm64(guest: Guest) -> None:
    results = wait_for(lambda: [ln for ln in journal(guest).splitlines() if RESULT.search(ln)], 300, "results")
    assert "ready: " in journal(guest)
    assert all("truth" in ln for ln in results), results  # the demo scores itself against its own scene
