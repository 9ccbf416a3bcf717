"""``edged doctor`` as a user runs it: ``python -m edged doctor`` subprocesses, the real stand-in
libedgetpu (tests/fake_edgetpu/fake_edgetpu.c) loaded in real Edge TPU worker processes, fake sysfs
and /dev trees for the TPUs (EDGED_SYSFS_ROOT / EDGED_DEV_ROOT), and this machine's real /sys."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from support import fake_edgetpu

from edged.doctor import Options, collect, resolve_user, unit_user
from edged.doctor.runtimes import probe_library

pytestmark = pytest.mark.system  # Edge TPU worker processes

ROOT = Path(__file__).resolve().parent.parent
TPU_MODEL = "mobilenet_v1_0.25_128_quant_edgetpu.tflite"


@pytest.fixture(scope="session")
def libs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("fake_edgetpu")
    return {"load": fake_edgetpu.build(out), "refuse": fake_edgetpu.build(out, refuse=True)}


@pytest.fixture()
def roots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """Empty fake sysfs and /dev trees, for this process and the doctor subprocesses."""
    sys_r, dev_r = tmp_path / "sys", tmp_path / "dev"
    sys_r.mkdir()
    dev_r.mkdir()
    monkeypatch.setenv("EDGED_SYSFS_ROOT", str(sys_r))
    monkeypatch.setenv("EDGED_DEV_ROOT", str(dev_r))
    monkeypatch.delenv("EDGED_FAKE_FAULT_FILE", raising=False)
    return sys_r, dev_r


def usb_tpu(sys_r: Path, vendor: str, product: str) -> None:
    """A USB Accelerator at 2-1 on the fake sysfs tree, on a USB 3 link."""
    dev = sys_r / "bus" / "usb" / "devices" / "2-1"
    dev.mkdir(parents=True)
    attributes = {"idVendor": vendor, "idProduct": product, "busnum": "2", "devnum": "3", "speed": "5000"}
    for name, value in attributes.items():
        (dev / name).write_text(value + "\n")


def doctor(*args: Any, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "edged", "doctor", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=environ,
    )


def lines(proc: subprocess.CompletedProcess[str], check: str) -> list[str]:
    """The finding lines of ``check`` (their remedy line joined on)."""
    out, rows = [], proc.stdout.splitlines()
    for i, row in enumerate(rows):
        head = row[7:].split(":", 1)[0].split()
        if row.startswith("[") and head and head[0] == check:
            remedy = rows[i + 1] if i + 1 < len(rows) and rows[i + 1].startswith("       -> ") else ""
            out.append(row + ("\n" + remedy if remedy else ""))
    return out


def no_traceback(proc: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr


# ---------------------------------------------------------------------------- the delegate test


def test_a_delegate_that_loads_is_ok_and_says_the_test_model_is_cpu_only(libs, roots) -> None:
    proc = doctor("--library", libs["load"], "--device", "usb:0", "--deadline", 20)
    no_traceback(proc)
    assert proc.returncode == 0, proc.stdout
    [line] = lines(proc, "delegate")
    assert line.startswith("[  ok] delegate usb:0: delegate loaded") and "digits_int8.tflite ran in" in line
    assert "CPU-only" in line and "not the TPU's execution" in line


def test_a_delegate_that_refuses_to_load_is_a_problem_with_the_likely_causes(libs, roots) -> None:
    proc = doctor("--library", libs["refuse"], "--device", "usb:0", "--deadline", 20)
    no_traceback(proc)
    assert proc.returncode == 1, proc.stdout
    [line] = lines(proc, "delegate")
    assert line.startswith("[FAIL] delegate usb:0: the delegate did not load: Failed to load delegate from")
    assert "no Edge TPU device found" in line  # the library's own report
    assert "device-node check" in line and "another TF Lite version" in line


def gone(pid: int) -> bool:
    """No process ``pid`` any more (or only its zombie: dead, neither running nor stopped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


@pytest.mark.parametrize("fault", ["abort", "hang", "load-abort", "load-hang"])
def test_a_worker_that_aborts_or_hangs_is_a_problem_and_the_doctor_goes_on(libs, roots, tmp_path, fault) -> None:
    """abort/hang: SIGABRT or SIGSTOP from a thread just after the delegate was created; load-abort/load-hang:
    inside tflite_plugin_create_delegate, before it returns. Either way one finding, and no worker left behind."""
    (tmp_path / "fault").write_text(f"{fault} 0\n")
    log = tmp_path / "delegate.log"
    env = {"EDGED_FAKE_FAULT_FILE": str(tmp_path / "fault"), "EDGED_FAKE_DELEGATE_LOG": str(log)}
    proc = doctor("--library", libs["load"], "--device", "usb:0", "--deadline", 4, env=env)
    no_traceback(proc)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    [line] = lines(proc, "delegate")
    if fault.endswith("abort"):
        assert line.startswith("[FAIL] delegate usb:0: the worker aborted (SIGABRT: libedgetpu's LOG(FATAL))")
        assert "during the delegate load or test: worker killed by SIGABRT" in line and "dmesg" in line
    else:
        assert line.startswith("[FAIL] delegate usb:0: no answer within 4 s from the worker loading the delegate")
        assert "replug" in line
    # the checks before the delegate test ran, and the summary counts every finding
    assert lines(proc, "runtime") and lines(proc, "libedgetpu")[0].startswith("[  ok] libedgetpu")
    assert proc.stdout.rstrip().splitlines()[-1].startswith(f"{proc.stdout.count('[')} checks: 1 problem")
    [create] = [row for row in log.read_text().splitlines() if row.startswith("create ")]
    pid = int(create.split()[1].removeprefix("pid="))
    assert gone(pid), f"the worker {pid} is left behind ({fault})"


# ---------------------------------------------------------------------------- libedgetpu


def test_the_library_version_is_read_from_the_library(libs) -> None:
    lib = probe_library(str(libs["load"]))
    assert lib.loaded and lib.how == "--library"
    assert lib.version == fake_edgetpu.VERSION and lib.runtime_version == 14
    assert lib.path == str(libs["load"].resolve())


def test_a_missing_library_is_a_problem_when_a_tpu_is_wanted(roots, tmp_path) -> None:
    missing = tmp_path / "libedgetpu.so.1"
    proc = doctor("--library", missing, "--device", "usb:0", "--deadline", 20)
    no_traceback(proc)
    assert proc.returncode == 1
    [lib] = lines(proc, "libedgetpu")
    assert lib.startswith(f"[FAIL] libedgetpu: {missing} cannot be loaded") and "libedgetpu1-std" in lib
    [test] = lines(proc, "delegate")
    assert f"delegate library not found: {missing}" in test


@pytest.mark.parametrize("coral", [False, True])
def test_pycoral_counts_only_when_it_is_corals(roots, tmp_path, coral) -> None:
    """A "pycoral" distribution without pycoral.utils.edgetpu is PyPI's unrelated package; with it, Coral's
    (found, not imported: Coral's loads libedgetpu -- this one would fail the doctor if it were imported)."""
    site = tmp_path / "site"
    (site / "pycoral-0.1.dist-info").mkdir(parents=True)
    (site / "pycoral-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: pycoral\nVersion: 0.1\n")
    (site / "pycoral" / "utils").mkdir(parents=True)
    (site / "pycoral" / "__init__.py").write_text("")
    if coral:
        (site / "pycoral" / "utils" / "__init__.py").write_text("")
        (site / "pycoral" / "utils" / "edgetpu.py").write_text("raise SystemExit('imported')\n")
    proc = doctor("--json", env={"PYTHONPATH": f"{ROOT}{os.pathsep}{site}"})
    [runtime] = [f for f in json.loads(proc.stdout)["findings"] if f["check"] == "runtime"]
    if coral:
        assert runtime["details"]["installed"]["pycoral (Coral's)"] == "0.1"
        assert "pycoral (Coral's) 0.1" in runtime["message"] and "not Coral's" not in runtime["message"]
    else:
        assert "the 'pycoral' 0.1 installed is not Coral's (it has no pycoral.utils.edgetpu" in runtime["message"]
        assert "PyPI's pycoral is an unrelated package" in runtime["message"]
        assert not any(name.startswith("pycoral") for name in runtime["details"]["installed"])


# ---------------------------------------------------------------------------- the hardware after a load


def test_a_usb_tpu_still_at_its_boot_id_after_the_load_is_a_problem(libs, roots) -> None:
    usb_tpu(roots[0], "1a6e", "089a")
    proc = doctor("--library", libs["load"], "--deadline", 20)
    no_traceback(proc)
    assert proc.returncode == 1
    assert lines(proc, "edgetpu-found")[0].startswith("[  ok] edgetpu-found: 1 Edge TPU: usb:0 (1a6e:089a)")
    [after] = lines(proc, "usb-state")  # the state after the load replaces "firmware not loaded yet"
    assert after.startswith("[FAIL] usb-state usb:0: still 1a6e:089a after a delegate load")
    assert lines(proc, "delegate")[0].startswith("[  ok] delegate usb:0")


def test_a_tpu_another_program_holds_gets_no_delegate_test_unless_forced(libs, roots) -> None:
    import stat

    from support.fakeboard import hold

    usb_tpu(roots[0], "18d1", "9302")
    node = roots[1] / "bus" / "usb" / "002" / "003"
    node.parent.mkdir(parents=True)
    os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # a node a process can hold open
    holder = hold(node)
    try:
        proc = doctor("--library", libs["load"], "--deadline", 20)
        forced = doctor("--library", libs["load"], "--deadline", 20, "--device", "usb:0")
    finally:
        holder.kill()
        holder.wait()
    no_traceback(proc)
    [used] = lines(proc, "in-use")
    assert used.startswith(f"[WARN] in-use usb:0: in use by pid {holder.pid} (sleep)") and "not run on it" in used
    assert lines(proc, "delegate") == []  # neither a test nor "no Edge TPU is present"
    assert proc.returncode == 0, proc.stdout  # a warning: the board itself is fine
    assert lines(forced, "delegate")[0].startswith("[  ok] delegate usb:0: delegate loaded")


# ---------------------------------------------------------------------------- --config


def write_config(path: Path, models: Path, testdata: Path) -> Path:
    source = {"type": "images", "path": str(testdata / "images" / "grace_hopper.bmp"), "fps": 1}
    cfg = {
        "streams": [
            {"id": "digits", "source": source, "sinks": [],
             "model": {"path": str(ROOT / "models" / "digits_int8.tflite"), "accelerator": "cpu"}},
            {"id": "cam", "source": source, "sinks": [],
             "model": {"path": str(models / TPU_MODEL), "labels": str(models / "imagenet_labels.txt")}},
        ]
    }  # fmt: skip
    path.write_text(json.dumps(cfg))  # JSON is YAML
    return path


def test_config_placement_of_a_cpu_and_an_edge_tpu_stream_and_a_real_tpu_test(
    libs, roots, tmp_path, models_dir, testdata
) -> None:
    usb_tpu(roots[0], "18d1", "9302")
    cfg = write_config(tmp_path / "edged.yaml", models_dir, testdata)
    proc = doctor("--config", cfg, "--library", libs["load"], "--deadline", 20)
    no_traceback(proc)
    assert lines(proc, "config") == [f"[  ok] config: {cfg}: valid (2 streams)"]
    cpu, tpu = lines(proc, "placement")
    assert cpu == "[  ok] placement: stream digits: models/digits_int8.tflite on the CPU (accelerator: cpu)"
    assert tpu.startswith("[  ok] placement: stream cam: ") and tpu.endswith(
        f"{TPU_MODEL} on usb:0 (compiled for the Edge TPU)"
    )
    # the delegate test ran the configuration's compiled model: it does not prepare on the stand-in
    [test] = lines(proc, "delegate")
    assert test.startswith("[FAIL] delegate usb:0: the test model did not run with the delegate"), test
    assert proc.returncode == 1


def test_config_with_no_tpu_says_the_edge_tpu_stream_runs_on_its_cpu_twin(roots, tmp_path, models_dir, testdata):
    cfg = write_config(tmp_path / "edged.yaml", models_dir, testdata)
    proc = doctor("--config", cfg, "--library", tmp_path / "libedgetpu.so.1")
    no_traceback(proc)
    _, tpu = lines(proc, "placement")
    assert tpu.startswith("[WARN] placement: stream cam:") and "no Edge TPU is present: runs on its CPU twin" in tpu
    [lib] = lines(proc, "libedgetpu")  # a stream wants a TPU: a missing libedgetpu is a problem then
    assert lib.startswith(f"[FAIL] libedgetpu: {tmp_path / 'libedgetpu.so.1'} cannot be loaded")
    assert "no Edge TPU needs it now" not in lib
    assert lines(proc, "delegate")[0].startswith("[  --] delegate: no test inference was run")
    assert proc.returncode == 1


def test_a_broken_config_is_one_line_and_a_failure(roots, tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("streams: [\n  {id: x\n")
    proc = doctor("--config", bad)
    no_traceback(proc)
    assert proc.returncode == 1
    [line] = lines(proc, "config")
    head, remedy = line.split("\n")
    assert head.startswith(f"[FAIL] config: {bad}: line ") and "YAML syntax error" in head
    assert remedy == f"       -> fix the file; `edged config check {bad}` says the same"
    assert lines(proc, "runtime"), "the other checks still ran"


def test_a_malformed_device_is_a_one_line_error(roots) -> None:
    proc = doctor("--device", "usb:x")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines() == [proc.stderr.strip()] and proc.stderr.startswith("edged: error: invalid Edge")


# ---------------------------------------------------------------------------- --json, the user, this machine


def test_json_carries_the_same_findings(libs, roots) -> None:
    args = ("--library", libs["refuse"], "--device", "usb:0", "--deadline", 20)
    text, js = doctor(*args), doctor(*args, "--json")
    assert js.returncode == text.returncode == 1
    data = json.loads(js.stdout)
    assert data["status"] == "problem"
    found = data["findings"]
    assert len(found) == int(text.stdout.splitlines()[-1].split()[0])
    for f in found:
        assert set(f) == {"check", "status", "message", "remedy", "tpu", "details"}
        assert f["message"].split(" (")[0].split(":")[0] in text.stdout
    delegate = next(f for f in found if f["check"] == "delegate")
    assert delegate["status"] == "problem" and delegate["tpu"] == "usb:0" and delegate["details"]["kind"] == "delegate"
    lib = next(f for f in found if f["check"] == "libedgetpu")
    assert lib["details"]["version"] == fake_edgetpu.VERSION and lib["details"]["libedgetpu_runtime_version"] == 14
    assert lib["details"]["runtime"] and lib["details"]["runtime_version"]


def test_the_service_user_is_read_from_the_installed_unit(roots, tmp_path) -> None:
    unit = tmp_path / "edged.service"
    unit.write_text("[Unit]\nDescription=edged\nUser=root\n\n[Service]\nExecStart=/usr/bin/edged run\nUser=nobody\n")
    assert unit_user([tmp_path / "absent.service", unit]) == ("nobody", unit)
    user, finding = resolve_user(Options(unit_paths=[unit]))
    assert user.name == "nobody" and user.source == f"the User= of {unit}"
    assert finding.message == f"device access checked for nobody (User= of {unit})"
    # --user wins over the unit; a unit without User= leaves the current user
    assert resolve_user(Options(user="root", unit_paths=[unit]))[0].name == "root"
    unit.write_text("[Service]\nExecStart=/usr/bin/edged run\n")
    user, finding = resolve_user(Options(unit_paths=[unit]))
    assert user.source == "the current user" and f"{unit} has no User=" in finding.message
    findings = collect(Options(unit_paths=[unit], deadline=20))
    assert findings[0].check == "user" and findings[-1].check == "delegate"


def test_doctor_on_this_machine_says_no_tpu_and_what_it_checked() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("EDGED_SYSFS_ROOT", "EDGED_DEV_ROOT")}
    proc = subprocess.run(
        [sys.executable, "-m", "edged", "doctor"], capture_output=True, text=True, timeout=120, cwd=ROOT,
        env={**env, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    no_traceback(proc)
    if "[  ok] edgetpu-found" in proc.stdout:
        pytest.skip("this machine has an Edge TPU")
    assert proc.returncode == 0, proc.stdout
    assert lines(proc, "edgetpu-found")[0].startswith("[WARN] edgetpu-found: no Edge TPU found")
    assert lines(proc, "delegate") == [
        "[  --] delegate: no test inference was run: no Edge TPU is present (the delegate library was still "
        "checked: see libedgetpu); `edged doctor --device usb:0` forces one"
    ]
    assert lines(proc, "runtime") and lines(proc, "libedgetpu") and lines(proc, "kernel")


def test_a_worker_start_that_fails_outside_edged_is_a_problem_never_ok() -> None:
    """The delegate test's thread turns any exception of the start into a finding (a spawn failure,
    a broken install): the doctor never reports a test that did not run as passed."""
    from edged.doctor.runtimes import _failed, _start
    from edged.errors import WorkerFailure

    class SpawnFails:
        label, pid = "usb:0", None

        def start(self) -> None:
            raise RuntimeError("cannot spawn")

    failure, timed_out = _start(SpawnFails(), 5.0)  # type: ignore[arg-type]
    assert isinstance(failure, WorkerFailure) and not timed_out
    assert failure.kind == "crash" and failure.reason == "the worker could not start: RuntimeError: cannot spawn"
    finding = _failed("usb:0", failure, timed_out, 5.0, {})
    assert finding.status == "problem" and "RuntimeError: cannot spawn" in finding.message
