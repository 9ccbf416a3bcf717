"""The opt-in soak: does a running daemon stay flat? Not run by CI.

    python bench/soak.py [--minutes 60] [--interval 5] [--no-mqtt] [--delegate standin|LIB] [--config FILE]

Runs ``edged run`` as a child process (the embedded demo by default; with mosquitto installed,
a local broker on loopback and an ``mqtt`` sink on every stream), and every ``--interval``
seconds samples the daemon and its children (the Edge TPU worker, with ``--delegate``) from
/proc: resident memory (VmRSS), tasks (threads) and open file descriptors. At the end it
prints the least-squares slope of each after a warm-up (MB/h, fds/h, tasks/h) and PASS or FAIL
on flatness (``--max-mb-per-hour``, ``--max-fds-per-hour``, no task growth, the daemon alive
and /healthz 200 at the end). Exit status 0 on PASS, 1 on FAIL.

``--delegate standin`` builds the stand-in libedgetpu of the tests (tests/fake_edgetpu, needs
cc) and runs the demo's detector in an Edge TPU worker process through it; on a device, give
the real library (``--delegate libedgetpu.so.1``) to soak the worker path on the TPU.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edged.config import default_config  # noqa: E402


@dataclass
class Sample:
    t: float  # seconds since the start
    rss_mb: float
    tasks: int
    fds: int
    processes: int


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            continue
    return out


def status_fields(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.split(":", 1) for line in f if ":" in line)


def sample(pid: int, t: float) -> Sample:
    """The daemon and its children as a cgroup would count them (RSS and tasks summed)."""
    rss_kb = tasks = fds = n = 0
    for p in tree(pid):
        try:
            st = status_fields(p)
            rss_kb += int(st["VmRSS"].split()[0])
            tasks += int(st["Threads"])
            fds += len(os.listdir(f"/proc/{p}/fd"))
            n += 1
        except (OSError, KeyError):
            continue
    return Sample(t, rss_kb / 1024, tasks, fds, n)


def slope_per_hour(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys over xs (seconds), per hour."""
    n = len(xs)
    if n < 2:
        return 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    var = sum((x - mx) ** 2 for x in xs)
    return 0.0 if var == 0 else 3600 * sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var


def start_broker(tmp: Path, port: int) -> subprocess.Popen | None:
    binary = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")
    if binary is None:
        return None
    conf = tmp / "mosquitto.conf"
    lines = [f"listener {port} 127.0.0.1", "allow_anonymous true", "log_dest none"]
    if os.geteuid() == 0:
        lines.append("user root")
    conf.write_text("\n".join(lines) + "\n")
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(50):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    return None


def standin_delegate(tmp: Path) -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    from support import fake_edgetpu

    return fake_edgetpu.build(tmp)


def on_worker(cfg: dict, tmp: Path, library: str) -> None:
    """Each stream's model in an Edge TPU worker through ``library``. The stand-in claims no
    node, so the model it runs is the CPU model saved under its ``_edgetpu`` name, its twin beside it."""
    cfg["edgetpu"]["library"] = library
    for s in cfg["streams"]:
        src = Path(s["model"]["path"])
        if not src.stem.endswith("_edgetpu"):
            shutil.copy(src, tmp / src.name)
            shutil.copy(src, tmp / f"{src.stem}_edgetpu{src.suffix}")
            s["model"]["path"] = str(tmp / f"{src.stem}_edgetpu{src.suffix}")
        s["model"]["accelerator"] = "edgetpu"


def make_config(args: argparse.Namespace, tmp: Path, port: int, mqtt_port: int | None) -> Path:
    cfg = yaml.safe_load(Path(args.config).read_text()) if args.config else default_config().model_dump(mode="json")
    cfg["listen"] = f"127.0.0.1:{port}"
    if mqtt_port is not None:
        for s in cfg["streams"]:
            s["sinks"].append(
                {"type": "mqtt", "host": "127.0.0.1", "port": mqtt_port, "queue_path": str(tmp / f"q-{s['id']}")}
            )
    if args.delegate:
        lib = str(standin_delegate(tmp)) if args.delegate == "standin" else args.delegate
        on_worker(cfg, tmp, lib)
    path = tmp / "edged.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def healthz(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def counts(port: int) -> dict[str, float]:
    """The work done: inferences, and the results the MQTT sinks sent, from /metrics (summed over their labels)."""
    out: dict[str, float] = {}
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return out
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        for metric, key in (("edged_inferences_total{", "inferences"), ("edged_publish_total{", "published")):
            if name.startswith(metric) and ('outcome="sent"' in name or key == "inferences"):
                out[key] = out.get(key, 0) + float(value)
    return out


def judge(samples: list[Sample], warmup: float, args: argparse.Namespace, alive: bool, health: int) -> bool:
    steady = [s for s in samples if s.t >= warmup] or samples
    xs = [s.t for s in steady]
    mb_h = slope_per_hour(xs, [s.rss_mb for s in steady])
    fd_h = slope_per_hour(xs, [float(s.fds) for s in steady])
    task_h = slope_per_hour(xs, [float(s.tasks) for s in steady])
    first, last = steady[0], steady[-1]
    ok = alive and health == 200 and mb_h <= args.max_mb_per_hour and fd_h <= args.max_fds_per_hour
    ok = ok and max(s.tasks for s in steady) <= first.tasks + 2
    report = {
        "minutes": round(samples[-1].t / 60, 1),
        "samples": len(samples),
        "warmup_s": warmup,
        "processes": last.processes,
        "rss_mb": {"first": round(first.rss_mb, 1), "last": round(last.rss_mb, 1),
                   "max": round(max(s.rss_mb for s in samples), 1), "slope_mb_per_h": round(mb_h, 2)},
        "fds": {"first": first.fds, "last": last.fds, "max": max(s.fds for s in samples),
                "slope_per_h": round(fd_h, 2)},
        "tasks": {"first": first.tasks, "last": last.tasks, "max": max(s.tasks for s in samples),
                  "slope_per_h": round(task_h, 2)},
        "alive": alive,
        "healthz": health,
    }  # fmt: skip
    print(json.dumps(report, indent=1))
    print(
        f"{'PASS' if ok else 'FAIL'}: RSS {mb_h:+.2f} MB/h (limit {args.max_mb_per_hour:g}), "
        f"fds {fd_h:+.2f}/h (limit {args.max_fds_per_hour:g}), tasks {first.tasks} -> {last.tasks}"
    )
    return ok


def soak(args: argparse.Namespace, tmp: Path) -> bool:
    port = free_port()
    mqtt_port = free_port() if args.mqtt else None
    broker = start_broker(tmp, mqtt_port) if mqtt_port is not None else None
    if mqtt_port is not None and broker is None:
        print("mosquitto not found: no MQTT sink", file=sys.stderr)
        mqtt_port = None
    cfg = make_config(args, tmp, port, mqtt_port)
    log = (tmp / "edged.log").open("wb")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "edged", "run", "--config", str(cfg), "--log-level", "warning"]
    daemon = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    print(f"soak: pid {daemon.pid}, {args.minutes:g} min, mqtt {'on' if mqtt_port else 'off'}, "
          f"delegate {args.delegate or 'none'}, log {tmp / 'edged.log'}", flush=True)  # fmt: skip
    samples: list[Sample] = []
    t0 = time.monotonic()
    try:
        while (t := time.monotonic() - t0) < args.minutes * 60 and daemon.poll() is None:
            samples.append(sample(daemon.pid, t))
            if args.verbose:
                print(samples[-1], flush=True)
            time.sleep(args.interval)
        alive, health = daemon.poll() is None, healthz(port)
        print(f"work done: {counts(port)}", flush=True)
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(15)
        except subprocess.TimeoutExpired:
            daemon.kill()
        if broker is not None:
            broker.terminate()
            broker.wait(5)
    if not samples:
        print("FAIL: the daemon exited at once; its log:\n" + (tmp / "edged.log").read_text(), file=sys.stderr)
        return False
    warmup = min(args.warmup, samples[-1].t / 2)
    return judge(samples, warmup, args, alive, health)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--interval", type=float, default=5.0, help="seconds between samples")
    ap.add_argument("--warmup", type=float, default=120.0, help="seconds left out of the slopes")
    ap.add_argument("--config", help="a configuration instead of the embedded demo")
    ap.add_argument("--no-mqtt", dest="mqtt", action="store_false", help="no local mosquitto and MQTT sink")
    ap.add_argument("--delegate", help="run the models in an Edge TPU worker: 'standin' or a libedgetpu path")
    ap.add_argument("--max-mb-per-hour", type=float, default=5.0)
    ap.add_argument("--max-fds-per-hour", type=float, default=5.0)
    ap.add_argument("--keep", action="store_true", help="keep the working directory (config, log, queues)")
    ap.add_argument("-v", "--verbose", action="store_true", help="print every sample")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="edged-soak-"))
    try:
        return 0 if soak(args, tmp) else 1
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
