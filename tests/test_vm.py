"""edged installed on real Debian systems: systemd as PID 1, journald, the hardened unit.

Each guest (:mod:`support.vm`) is built from Debian's archive and booted with QEMU in software
emulation; the checkout is copied in and ``deploy/install.sh`` installs it as a user would, from
PyPI. Then, on Debian bookworm (Python 3.11) and trixie (Python 3.13), amd64: the unit reaches
active with READY=1, its STATUS line, results and warnings in the journal at their priorities,
reload applied and refused, a wedged inference loop restarted by systemd's watchdog, an Edge TPU
stream's worker under the full hardening (the stand-in delegate), a stop that leaves no process
and no shared memory, ``systemd-analyze security``, uninstall and purge. On bookworm arm64 (the
base of Raspberry Pi OS): install.sh, the demo, results in the journal (``test_vm_arm64.py``).

Marked ``vm``: ``pytest -m "not vm"`` leaves them out (they take minutes: see docs/operations.md).
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
from support import fake_edgetpu, vm
from support.guest import Guest
from support.wait import wait_for

pytestmark = [pytest.mark.system, pytest.mark.vm, pytest.mark.timeout(1800)]

CONFIG = "/etc/edged/edged.yaml"
EDGED = "/opt/edged/venv/bin/edged"
VPY = "/opt/edged/venv/bin/python"
PYTHON = {"bookworm": "3.11", "trixie": "3.13"}
TPU_LIB = "/usr/local/lib/edged-test/libfake_edgetpu.so"
TPU_MODEL = "mobilenet_v1_0.25_128_quant.tflite"
RESULT = re.compile(r"\bdemo #\d+ cpu: \d+ objects?")  # the log sink's line


@pytest.fixture(scope="module", params=[vm.Spec("bookworm", "amd64"), vm.Spec("trixie", "amd64")], ids=str)
def guest(request: pytest.FixtureRequest, guest_pool: Any) -> Guest:
    """The guest with edged installed by deploy/install.sh from this checkout (readied by the pool)."""
    g = guest_pool.get(request.param)
    print(f"{request.param.name}: boot {g.boot_seconds:.0f} s, install.sh {g.install_seconds:.0f} s")
    return g


def journal(g: Guest, *args: str, since: str = "") -> str:
    cmd = ["journalctl", "-u", "edged", "--no-pager", "-o", "cat", *args]
    if since:
        cmd += ["--since", since]
    return g.run(shlex.join(cmd), check=False).out


def show(g: Guest, *props: str) -> dict[str, str]:
    out = g.run(f"systemctl show edged -p {','.join(props)}").out
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def api(g: Guest, path: str) -> Any:
    url = f"http://127.0.0.1:9110{path}"
    code = f"import urllib.request; print(urllib.request.urlopen({url!r}, timeout=10).read().decode())"
    return json.loads(g.run(f"python3 -c {shlex.quote(code)}").out)


def guest_now(g: Guest) -> str:
    return g.run("date '+%Y-%m-%d %H:%M:%S'").out.strip()


def edit_config(g: Guest, python: str) -> None:
    """Change /etc/edged/edged.yaml with ``python`` run on ``cfg`` (a dict), in the guest."""
    code = (
        f"import yaml\ncfg = yaml.safe_load(open({CONFIG!r}))\n{python}\n"
        f"yaml.safe_dump(cfg, open({CONFIG!r}, 'w'), sort_keys=False)\n"
    )
    g.run(f"{VPY} -c {shlex.quote(code)}")


def test_install_brings_the_unit_to_active_with_ready_and_its_python(guest: Guest) -> None:
    suite = guest.image.spec.suite
    assert "started edged" in guest.install_log, guest.install_log
    props = show(guest, "ActiveState", "SubState", "Type", "NRestarts", "StatusText", "User")
    # Type=notify: active (running) only once edged said READY=1
    assert (props["ActiveState"], props["SubState"], props["Type"]) == ("active", "running", "notify"), props
    assert props["NRestarts"] == "0" and props["User"] == "edged", props
    assert re.search(r"\bdemo\b.*fps", props["StatusText"]), props
    assert "ready: " in journal(guest)
    version = guest.run(f"{VPY} -c 'import sys; print(\"%d.%d\" % sys.version_info[:2])'").out.strip()
    assert version == PYTHON[suite]
    status = api(guest, "/api/v1/status")
    stream = next(s for s in status["streams"] if s["id"] == "demo")
    assert (stream["runtime"], stream["accelerator"], stream["state"]) == ("ai_edge_litert", "cpu", "running"), stream


def test_systemctl_status_shows_the_status_line(guest: Guest) -> None:
    out = guest.run("systemctl status edged --no-pager --lines=0", check=False).out
    status = re.search(r'Status: "(.*)"', out)
    assert status and "demo" in status.group(1) and "fps" in status.group(1), out


def test_results_reach_the_journal_at_info_and_warnings_at_warning(guest: Guest) -> None:
    results = wait_for(lambda: [ln for ln in journal(guest).splitlines() if RESULT.search(ln)], 60, "results")
    assert len(results) >= 3, results
    since = guest_now(guest)
    # a warning edged logs: a reload that changes listen: (which needs a restart)
    edit_config(guest, "cfg['listen'] = '127.0.0.1:9111'")
    guest.run("systemctl reload edged")
    warning = wait_for(
        lambda: "takes effect at the next restart" in journal(guest, "-p", "warning", since=since),
        30,
        "the reload's warning under journalctl -p warning",
    )
    assert warning
    # the reload's info line is in the journal, not among the warnings
    wait_for(lambda: "reload: no stream changed" in journal(guest, since=since), 30, "the reload's info line")
    assert "reload: no stream changed" not in journal(guest, "-p", "warning", since=since)
    assert not RESULT.search(journal(guest, "-p", "warning", since=since))
    edit_config(guest, "cfg['listen'] = '127.0.0.1:9110'")
    guest.run("systemctl reload edged")


def test_the_journal_has_edgeds_fields(guest: Guest) -> None:
    """Native journal fields: journalctl -u edged EDGED_STREAM=demo finds the stream's lines."""
    out = guest.run("journalctl -u edged --no-pager -o json EDGED_STREAM=demo").out
    entries = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert entries, out
    assert all(e["EDGED_STREAM"] == "demo" and e["SYSLOG_IDENTIFIER"] == "edged" for e in entries)
    start = [e for e in entries if e["MESSAGE"].startswith("stream demo:")]
    assert start and start[0]["EDGED_ACCELERATOR"] == "cpu" and start[0]["PRIORITY"] == "6", start
    results = [e for e in entries if RESULT.search(e["MESSAGE"])]
    assert results and {"CODE_FILE", "CODE_LINE", "LOGGER", "THREAD_NAME"} <= set(results[0]), results[:1]
    assert json.loads(results[0]["EDGED_RESULT"])["stream"] == "demo"


def test_reload_applies_a_changed_configuration_and_refuses_a_broken_one(guest: Guest) -> None:
    edit_config(
        guest,
        "s = dict(cfg['streams'][0]); s['id'] = 'second'; s['source'] = dict(s['source'], seed=7, fps=5.0)\n"
        "cfg['streams'].append(s)",
    )
    pid = show(guest, "MainPID")["MainPID"]
    guest.run("systemctl reload edged")
    wait_for(
        lambda: {s["id"] for s in api(guest, "/api/v1/status")["streams"]} == {"demo", "second"},
        60,
        "the added stream running after systemctl reload",
    )
    since = guest_now(guest)
    good = guest.run(f"cat {CONFIG}").out
    guest.run(f"printf 'streams: [\\n' >> {CONFIG}")
    guest.run("systemctl reload edged")  # the reload is asked; edged refuses it and keeps running
    refused = wait_for(
        lambda: [ln for ln in journal(guest, "-p", "err", since=since).splitlines() if "reload refused" in ln],
        30,
        "the refusal in the journal at priority err",
    )
    assert CONFIG in refused[0] or "line" in refused[0], refused
    props = show(guest, "ActiveState", "MainPID")
    assert props == {"ActiveState": "active", "MainPID": pid}, props
    assert {s["id"] for s in api(guest, "/api/v1/status")["streams"]} == {"demo", "second"}
    guest.run(f"cat > {CONFIG}", input=good.encode())
    edit_config(guest, "cfg['streams'] = cfg['streams'][:1]")
    guest.run("systemctl reload edged")
    wait_for(
        lambda: [s["id"] for s in api(guest, "/api/v1/status")["streams"]] == ["demo"], 60, "back to the demo alone"
    )


WEDGE = r"""
import ctypes, os, random, sys, time, urllib.request
# stop one thread of edged and hold it: PTRACE_SEIZE + PTRACE_INTERRUPT stop that thread only, as a thread
# wedged in native code would be (a hung delegate). A thread stopped while it holds Python's GIL stops the
# whole process instead (nothing could log then), so the stop is kept only when the daemon still answers
# its API; otherwise the thread is let go (PTRACE_CONT) and stopped again a moment later. Then wait (__WALL)
# until the thread exits (the process killed), reaping it, so that the process can end
libc = ctypes.CDLL(None, use_errno=True)
pid, name = int(sys.argv[1]), sys.argv[2]
tids = [t for t in os.listdir(f"/proc/{pid}/task") if open(f"/proc/{pid}/task/{t}/comm").read().strip() == name]
assert tids, f"no thread {name} in {pid}"
tid = int(tids[0])


def ptrace(req):
    if libc.ptrace(req, tid, None, None) != 0:
        raise OSError(ctypes.get_errno(), f"ptrace {req:#x}")


def answers():
    try:
        with urllib.request.urlopen("http://127.0.0.1:9110/api/v1/status", timeout=5) as r:
            return r.status == 200
    except OSError:
        return False


ptrace(0x4206)  # PTRACE_SEIZE
for attempt in range(30):
    ptrace(0x4207)  # PTRACE_INTERRUPT
    os.waitpid(tid, 0x40000000)  # __WALL: the stop
    if answers():
        break
    print("holds the GIL: let go", flush=True)
    ptrace(7)  # PTRACE_CONT
    time.sleep(random.uniform(0.05, 0.4))
else:
    sys.exit("every stop froze the whole process")
print("stopped", tid, "attempt", attempt, flush=True)
while True:
    _, status = os.waitpid(tid, 0x40000000)  # __WALL
    if os.WIFEXITED(status) or os.WIFSIGNALED(status):
        break  # a stop (the interrupt, a signal for it) is left as it is: the thread stays stopped
print("ended", flush=True)
"""


def test_a_wedged_inference_loop_is_restarted_by_the_watchdog(guest: Guest) -> None:
    before = show(guest, "MainPID", "NRestarts")
    since = guest_now(guest)
    guest.run("cat > /root/wedge.py", input=WEDGE.encode())
    guest.run(f"setsid python3 /root/wedge.py {before['MainPID']} demo-infer > /root/wedge.log 2>&1 < /dev/null &")
    wedge_log = lambda: guest.run("cat /root/wedge.log", check=False).out  # noqa: E731
    wait_for(lambda: "stopped" in wedge_log(), 120, lambda: f"the inference thread stopped: {wedge_log()}", interval=1)

    # edged stops feeding the watchdog (WatchdogSec=30: after 15 s without a turn), systemd kills and restarts it
    def restarted() -> bool:
        now = show(guest, "MainPID", "NRestarts", "ActiveState")
        return (
            now["NRestarts"] != before["NRestarts"]
            and now["ActiveState"] == "active"
            and now["MainPID"] != before["MainPID"]
        )

    wait_for(restarted, 180, lambda: f"a restart; journal:\n{journal(guest, since=since)[-3000:]}", interval=2)
    seen = journal(guest, since=since)
    assert "not feeding the systemd watchdog" in seen and "demo" in seen, seen[-3000:]
    system = guest.run(f"journalctl --no-pager -o cat -u edged --since {shlex.quote(since)} _PID=1", check=False).out
    assert "Watchdog timeout" in system, system
    assert int(show(guest, "NRestarts")["NRestarts"]) == int(before["NRestarts"]) + 1


@pytest.fixture(scope="module")
def stand_in(guest: Guest, tmp_path_factory: pytest.TempPathFactory, testdata: Path) -> str:
    """The stand-in libedgetpu (built here, the guest has no compiler) and a model, in the guest."""
    folder = tmp_path_factory.mktemp("tpu")
    fake_edgetpu.build(folder)
    (folder / TPU_MODEL).write_bytes((testdata / "models" / TPU_MODEL).read_bytes())
    (folder / "grace_hopper.bmp").write_bytes((testdata / "images" / "grace_hopper.bmp").read_bytes())
    guest.put(folder, "/usr/local/lib/edged-test")
    guest.run("chmod -R a+rX /usr/local/lib/edged-test")
    return "/usr/local/lib/edged-test"


def test_an_edgetpu_stream_runs_its_worker_under_the_full_hardening(guest: Guest, stand_in: str) -> None:
    since = guest_now(guest)
    # every instruction emulated: an inference takes a second, not milliseconds; the worker's deadline
    # is raised so that the emulation's slowness is not taken for a failing TPU
    edit_config(
        guest,
        f"cfg['edgetpu'].update(library={TPU_LIB!r}, deadline_seconds=30)\n"
        "cfg['streams'] = [s for s in cfg['streams'] if s['id'] != 'tpu']\n"
        "cfg['streams'].append({'id': 'tpu', 'source': {'type': 'images', 'path': "
        f"{stand_in + '/grace_hopper.bmp'!r}, 'fps': 2, 'loop': True}}, 'model': {{'path': "
        f"{stand_in + '/' + TPU_MODEL!r}, 'accelerator': 'edgetpu'}}, 'sinks': [{{'type': 'log'}}]}})",
    )
    guest.run("systemctl restart edged", timeout=180)

    def on_the_tpu() -> Any:
        streams = {s["id"]: s for s in api(guest, "/api/v1/status")["streams"]}
        tpu = streams.get("tpu", {})
        return tpu if tpu.get("accelerator") == "edgetpu" and tpu.get("processed", 0) > 0 else None

    stream = wait_for(
        on_the_tpu,
        120,
        lambda: f"the tpu stream on its worker; journal:\n{journal(guest, since=since)[-3000:]}",
        interval=2,
    )
    assert stream
    main = show(guest, "MainPID")["MainPID"]
    children = guest.run(f"ps -o pid=,user=,args= --ppid {main}").out
    # the worker: a child process (multiprocessing's spawn), the service's user
    assert re.search(r"^\s*\d+ edged .*spawn_main", children, re.M), children
    seen = journal(guest, since=since)
    assert "Operation not permitted" not in seen and "Bad system call" not in seen, seen[-3000:]
    # its shared memory (the frames it is given): in the unit's /dev/shm
    shm = guest.run("ls -l /dev/shm").out
    assert re.search(r"\bedged\b", shm), shm


def test_doctor_checks_for_the_units_user_and_loads_the_delegate(guest: Guest, stand_in: str) -> None:
    # as root, as the docs say to run it; the user whose access it checks is the unit's User=
    cmd = f"/opt/edged/venv/bin/edged doctor --json --library {TPU_LIB} --device usb:0 --deadline 30"
    res = guest.run(cmd, timeout=240, check=False)
    assert res.rc == 0, res.out + res.err
    found = {(f["check"], f["tpu"]): f for f in json.loads(res.out)["findings"]}
    assert found[("user", None)]["message"] == (
        "device access checked for edged (User= of /etc/systemd/system/edged.service)"
    ), found
    assert found[("edgetpu-found", None)]["status"] == "warning"  # the guest has no TPU
    library = found[("libedgetpu", None)]
    assert library["status"] == "ok" and "RuntimeVersion(14)" in library["message"], library
    delegate = found[("delegate", "usb:0")]
    assert delegate["status"] == "ok" and "the model is CPU-only" in delegate["message"], delegate


def test_stop_ends_within_the_timeout_and_leaves_no_process_or_shared_memory(guest: Guest) -> None:
    main = show(guest, "MainPID")["MainPID"]
    since = guest_now(guest)
    # timed in the guest (an SSH round trip to an emulated guest takes seconds of its own)
    timed = "import subprocess as s, time; t = time.monotonic(); s.run(['systemctl', 'stop', 'edged'], check=True)"
    took = float(guest.run(f"python3 -c {shlex.quote(timed + '; print(time.monotonic() - t)')}", timeout=60).out)
    assert took < 15, f"systemctl stop took {took:.1f} s (TimeoutStopSec=15)"
    seen = guest.run(f"journalctl --no-pager -o cat -u edged --since {shlex.quote(since)}", check=False).out
    assert "SIGKILL" not in seen and "Killing process" not in seen, seen
    assert guest.run("pgrep -u edged", check=False).out == ""
    assert guest.run(f"test -e /proc/{main}", check=False).rc != 0
    assert guest.run("find /dev/shm -user edged", check=False).out == ""
    guest.run("systemctl start edged", timeout=180)


def test_systemd_analyze_security_rates_the_installed_unit(guest: Guest) -> None:
    out = guest.run("systemd-analyze security edged --no-pager", check=False).out
    level = re.search(r"Overall exposure level for edged\.service: ([0-9.]+) (\w+)", out)
    assert level, out[-2000:]
    assert float(level.group(1)) <= 3.0, level.group(0)


def test_uninstall_and_purge_leave_nothing(guest: Guest) -> None:
    guest.run("cd /root/edged && bash deploy/uninstall.sh", timeout=120)
    assert guest.run("systemctl is-active edged", check=False).out.strip() in ("inactive", "unknown")
    assert guest.run("test -e /opt/edged || test -e /etc/systemd/system/edged.service", check=False).rc != 0
    assert guest.run("test -d /etc/edged && test -d /var/lib/edged && id edged").rc == 0  # kept without --purge
    guest.run("cd /root/edged && bash deploy/uninstall.sh --purge", timeout=120)
    left = guest.run(
        "ls -d /opt/edged /etc/edged /var/lib/edged /etc/systemd/system/edged.service* "
        "/etc/udev/rules.d/60-edged-coral.rules 2>/dev/null; getent passwd edged; "
        "systemctl list-units --all --no-legend 'edged*'",
        check=False,
    ).out
    assert left.strip() == "", left
    assert guest.run("pgrep -u edged", check=False).rc != 0
