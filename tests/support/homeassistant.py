"""A real Home Assistant core in a child process, its MQTT integration on a test's broker.

:func:`ha_python` builds (once, cached outside the repository) a virtual environment with
``homeassistant==VERSION`` and the requirements of the components :class:`HomeAssistant` sets
up, read from their manifests, so that it starts with ``--skip-pip``. :class:`HomeAssistant`
writes a minimal configuration and ``.storage/`` (an ``mqtt`` config entry, an owner with a
long-lived access token), starts ``python -m homeassistant``, waits until its API answers and
its MQTT client has published its birth message, and reads states (REST API) and registries
(websocket API, through a small aiohttp script run by the venv's Python).
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import hmac
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
import zipfile
from pathlib import Path
from typing import Any, Callable

import pytest

from support.client import free_port
from support.wait import wait_for

VERSION = "2024.3.3"  # the latest patch of 2024.3 (the last release line that installs on Python 3.11)
# The integrations whose manifests' requirements (and their dependencies') go into the venv.
# 2024.3's bootstrap sets up DEFAULT_INTEGRATIONS whatever the configuration (and goes into
# recovery mode when ``frontend`` fails): those first; then the core and logging ones, what the
# configuration sets up, what mqtt's platforms import at its start (camera imports stream), and what
# analytics imports (energy, recorder), stage 1 sets up (cloud).
COMPONENTS = (
    *("application_credentials", "backup", "frontend", "hardware", "logger", "network", "system_health"),
    *("automation", "person", "scene", "script", "tag", "zone", "counter", "input_boolean", "input_button"),
    *("input_datetime", "input_number", "input_select", "input_text", "schedule", "timer"),
    *("homeassistant", "persistent_notification", "system_log", "http", "api", "websocket_api", "config"),
    *("mqtt", "camera", "stream", "image", "binary_sensor", "sensor", "switch", "recorder", "energy", "cloud"),
)
# pins package_constraints.txt lacks: hass-nabucasa's acme 2.8.0 needs josepy 1 (2 has no ComparableX509)
EXTRA_CONSTRAINTS = ("josepy<2",)
STATUS_TOPIC = "homeassistant/status"


def _cache() -> Path:
    return Path(os.environ.get("EDGED_CACHE") or Path.home() / ".cache" / "edged")


def _unavailable(reason: str) -> None:
    if os.environ.get("EDGED_REQUIRE_TOOLS") == "1":
        pytest.fail(f"Home Assistant {VERSION}: {reason} (and EDGED_REQUIRE_TOOLS=1)")
    pytest.skip(f"Home Assistant {VERSION}: {reason}")


def component_requirements(wheel: zipfile.ZipFile, domains: tuple[str, ...] = COMPONENTS) -> list[str]:
    """The requirements of ``domains`` and of their dependencies, from the manifests in the wheel."""
    names = set(wheel.namelist())
    todo, seen, reqs = list(domains), set(), []
    while todo:
        domain = todo.pop()
        if domain in seen or (manifest := f"homeassistant/components/{domain}/manifest.json") not in names:
            continue
        seen.add(domain)
        data = json.loads(wheel.read(manifest))
        reqs += [r for r in data.get("requirements", []) if r not in reqs]
        todo += data.get("dependencies", [])
    return sorted(reqs)


def _run(cmd: list[str], what: str, timeout: float = 1800) -> None:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        _unavailable(f"{what}: {e}")
    else:
        if done.returncode != 0:
            out = "\n".join(line for line in (done.stdout + done.stderr).splitlines() if "is ignored" not in line)
            _unavailable(f"{what} failed ({done.returncode}):\n{out[-3000:]}")


def _build(venv: Path) -> None:
    """The venv in ``venv``: homeassistant and the components' requirements, all pinned by its
    package_constraints.txt (without it pip backtracks through sdists for many minutes)."""
    base = getattr(sys, "_base_executable", None) or sys.executable
    _run([base, "-m", "venv", str(venv)], f"{base} -m venv")
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    _run([*pip, "download", "--no-deps", "-d", str(venv / "dl"), f"homeassistant=={VERSION}"], "pip download")
    wheel_path = next((venv / "dl").glob("homeassistant-*.whl"))
    with zipfile.ZipFile(wheel_path) as wheel:
        constraints = wheel.read("homeassistant/package_constraints.txt").decode()
        (venv / "constraints.txt").write_text(constraints + "\n".join(EXTRA_CONSTRAINTS) + "\n")
        reqs = component_requirements(wheel)
    (venv / "requirements.txt").write_text("\n".join(reqs) + "\n")
    _run([*pip, "install", "-c", str(venv / "constraints.txt"), str(wheel_path), *reqs], "pip install")
    shutil.rmtree(venv / "dl")
    (venv / "edged-build.txt").write_text(_build_stamp())


def _build_stamp() -> str:
    """What a venv was built for: a cached venv built for something else is built anew."""
    return "\n".join([VERSION, *EXTRA_CONSTRAINTS, *COMPONENTS]) + "\n"


def _complete(venv: Path) -> bool:
    stamp = venv / "edged-build.txt"
    return (venv / "bin" / "python").exists() and stamp.exists() and stamp.read_text() == _build_stamp()


def ha_python() -> Path:
    """The Python of the cached venv with Home Assistant, built first if absent (under a file lock).

    Skips the test (fails it with EDGED_REQUIRE_TOOLS=1) when it cannot be built."""
    cache = _cache()
    final = cache / f"homeassistant-{VERSION}"
    python = final / "bin" / "python"
    if _complete(final):
        return python
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / f"homeassistant-{VERSION}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another test process may be building it
        if _complete(final):
            return python
        for stale in [*cache.glob(f"homeassistant-{VERSION}.tmp-*"), final]:  # killed, or built for less
            shutil.rmtree(stale, ignore_errors=True)
        tmp = cache / f"homeassistant-{VERSION}.tmp-{os.getpid()}"
        started = time.monotonic()
        try:
            _build(tmp)  # the venv is run as bin/python -m ...: its scripts' shebangs name tmp
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        tmp.rename(final)
        print(f"built the Home Assistant {VERSION} venv in {time.monotonic() - started:.0f} s: {final}")
    return python


def access_token(refresh_id: str, jwt_key: str, lifetime: int = 10 * 365 * 86400) -> str:
    """A Home Assistant access token: a JWT (HS256) with the refresh token's jwt_key, iss = its id."""

    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    now = int(time.time())
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps({"iss": refresh_id, "iat": now - 60, "exp": now + lifetime}).encode())
    sig = hmac.new(jwt_key.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(sig)}"


def _store(key: str, data: dict, version: int = 1, minor: int = 1) -> str:
    return json.dumps({"version": version, "minor_version": minor, "key": key, "data": data}, indent=1)


CONFIGURATION = """\
homeassistant:
  name: edged test
  latitude: 52.37
  longitude: 4.89
  elevation: 0
  unit_system: metric
  time_zone: UTC
  currency: EUR
  country: NL
http:
  server_host: 127.0.0.1
  server_port: {http_port}
api:
websocket_api:
config:
logger:
  default: info
"""

WS_SCRIPT = """\
import asyncio, json, sys
import aiohttp

async def main(url, token, commands):
    async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
        await ws.receive_json()
        await ws.send_json({"type": "auth", "access_token": token})
        reply = await ws.receive_json()
        assert reply["type"] == "auth_ok", reply
        out = []
        for i, command in enumerate(commands, 1):
            await ws.send_json({"id": i, **command})
            while (msg := await ws.receive_json()).get("id") != i:
                pass
            out.append(msg)
        print(json.dumps(out))

args = json.load(sys.stdin)
asyncio.run(main(args["url"], args["token"], args["commands"]))
"""


def seed_storage(storage: Path, broker_port: int) -> str:
    """Write ``.storage/``: an owner with a long-lived access token, onboarding done, the mqtt
    config entry (127.0.0.1:broker_port, discovery on, prefix ``homeassistant``). The token."""
    storage.mkdir(parents=True, exist_ok=True)
    user, refresh, jwt_key = uuid.uuid4().hex, uuid.uuid4().hex, os.urandom(64).hex()
    groups = [
        {"id": "system-admin", "name": "Administrators"},
        {"id": "system-users", "name": "Users"},
        {"id": "system-read-only", "name": "Read Only"},
    ]
    users = [
        {"id": user, "group_ids": ["system-admin"], "is_owner": True, "is_active": True, "name": "edged test"}
        | {"system_generated": False, "local_only": False}
    ]
    tokens = [
        {"id": refresh, "user_id": user, "client_id": None, "client_name": "edged tests", "client_icon": None}
        | {"token_type": "long_lived_access_token", "created_at": "2024-03-01T00:00:00+00:00"}
        | {"access_token_expiration": 10 * 365 * 86400.0, "token": os.urandom(64).hex(), "jwt_key": jwt_key}
        | {"last_used_at": None, "last_used_ip": None, "credential_id": None, "version": VERSION}
    ]
    auth = {"users": users, "groups": groups, "credentials": [], "refresh_tokens": tokens}
    (storage / "auth").write_text(_store("auth", auth))
    (storage / "onboarding").write_text(_store("onboarding", {"done": ["user", "core_config", "integration"]}, 4))
    mqtt = {"broker": "127.0.0.1", "port": broker_port, "discovery": True, "discovery_prefix": "homeassistant"}
    entry = {"entry_id": uuid.uuid4().hex, "version": 1, "minor_version": 1, "domain": "mqtt", "title": "127.0.0.1"}
    entry |= {"data": mqtt, "options": {}, "pref_disable_new_entities": False, "pref_disable_polling": False}
    entry |= {"source": "user", "unique_id": None, "disabled_by": None}
    (storage / "core.config_entries").write_text(_store("core.config_entries", {"entries": [entry]}))
    return access_token(refresh, jwt_key)


class HomeAssistant:
    """``python -m homeassistant -c tmp/homeassistant --skip-pip``, its MQTT on 127.0.0.1:broker_port.

    A context manager: starts on enter, stops on exit. Its output (its log, at level info) goes to
    ``tmp/homeassistant/hass.log``, whose tail is in every failure message. ``status`` has what was
    published on ``homeassistant/status`` (payload, retain) since the harness connected."""

    def __init__(self, tmp: Path, broker_port: int, start_timeout: float = 300) -> None:
        self.python = ha_python()
        self.dir = tmp / "homeassistant"
        self.dir.mkdir(exist_ok=True)
        self.broker_port, self.start_timeout = broker_port, start_timeout
        self.http_port = free_port()
        self.base = f"http://127.0.0.1:{self.http_port}"
        (self.dir / "configuration.yaml").write_text(CONFIGURATION.format(http_port=self.http_port))
        self.token = seed_storage(self.dir / ".storage", broker_port)
        self.log_path = self.dir / "hass.log"
        self.proc: subprocess.Popen | None = None
        self.status: list[tuple[str, bool]] = []
        self.start_seconds = 0.0
        self._mqtt = self._watch_status()

    def _watch_status(self) -> Any:
        import paho.mqtt.client as mqtt

        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"ha-harness-{uuid.uuid4().hex[:8]}")
        client.on_connect = lambda c, *_: c.subscribe(STATUS_TOPIC, 1)
        client.on_message = lambda c, u, m: self.status.append((m.payload.decode(errors="replace"), bool(m.retain)))
        client.connect("127.0.0.1", self.broker_port)
        client.loop_start()
        return client

    def __enter__(self) -> HomeAssistant:
        try:
            self.start()
        except BaseException:  # a start that failed leaves no process nor client behind
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self._mqtt.loop_stop()
        self._mqtt.disconnect()

    def log(self, tail: int = 60) -> str:
        """The last ``tail`` lines of its log."""
        lines = self.log_path.read_text(errors="replace").splitlines() if self.log_path.exists() else []
        return "\n".join(lines[-tail:])

    def _what(self, what: str) -> Callable[[], str]:
        return lambda: f"{what}; the tail of {self.log_path}:\n{self.log()}"

    def start(self) -> float:
        """Start it; wait until the API says RUNNING and its birth ``online`` came. The seconds taken."""
        seen = len(self.status)
        started = time.monotonic()
        with self.log_path.open("ab") as log:
            cmd = [str(self.python), "-m", "homeassistant", "-c", str(self.dir), "--skip-pip"]
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)

        def up() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self._what("Home Assistant exited")()
            assert "Activating recovery mode" not in self.log(400), self._what("Home Assistant in recovery mode")()
            try:
                running = self._request("GET", "/api/config", timeout=2).get("state") == "RUNNING"
            except (OSError, ValueError):
                return False
            return running and any(payload == "online" for payload, _ in self.status[seen:])

        wait_for(up, self.start_timeout, self._what("Home Assistant to run with MQTT connected"), interval=0.5)
        self.start_seconds = time.monotonic() - started
        print(f"Home Assistant {VERSION} started in {self.start_seconds:.1f} s")
        return self.start_seconds

    def stop(self) -> None:
        """SIGTERM (it saves its registries), SIGKILL after 60 s. Idempotent."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> float:
        """Stop and start again (it publishes its birth message anew); the start's seconds."""
        self.stop()
        return self.start()

    def publish_birth(self, payload: str = "online") -> None:
        """Publish ``payload`` on ``homeassistant/status`` as Home Assistant does at start (not retained)."""
        self._mqtt.publish(STATUS_TOPIC, payload, qos=1).wait_for_publish(5)

    def _request(self, method: str, path: str, data: Any = None, timeout: float = 10) -> Any:
        body = None if data is None else json.dumps(data).encode()
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        req = urllib.request.Request(self.base + path, data=body, headers=headers, method=method)
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read() or b"null")

    def states(self) -> dict[str, dict]:
        """Every entity's state object (``state``, ``attributes``, ...) by entity_id (REST /api/states)."""
        return {s["entity_id"]: s for s in self._request("GET", "/api/states")}

    def state(self, entity_id: str) -> dict | None:
        """One entity's state object, None when it has none (REST /api/states/<entity_id>)."""
        try:
            return self._request("GET", f"/api/states/{entity_id}")
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return None
            raise

    def wait_state(self, entity_id: str, expected: str | Callable[[dict | None], Any], timeout: float = 30) -> Any:
        """Wait until the entity's state is ``expected`` (a state string, or a predicate on the state
        object, None when absent); the state object (the predicate's truthy result)."""
        pred = expected if callable(expected) else lambda s: s if s and s["state"] == expected else None
        last: list[Any] = [None]

        def check() -> Any:
            last[0] = self.state(entity_id)
            return pred(last[0])

        return wait_for(check, timeout, lambda: f"{entity_id} to be {expected!r}; it is {last[0]!r}", interval=0.2)

    def call_service(self, domain: str, service: str, data: dict | None = None) -> list[dict]:
        """Call a service (REST POST /api/services/<domain>/<service>); the states it changed."""
        return self._request("POST", f"/api/services/{domain}/{service}", data or {})

    def websocket(self, *commands: dict) -> list[dict]:
        """The results of websocket API commands, run in turn by aiohttp in the venv's Python."""
        args = {"url": f"ws://127.0.0.1:{self.http_port}/api/websocket", "token": self.token, "commands": commands}
        done = subprocess.run(
            [str(self.python), "-c", WS_SCRIPT], input=json.dumps(args), capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, f"websocket commands {commands} failed: {done.stderr[-2000:]}"
        replies = json.loads(done.stdout)
        assert all(r.get("success") for r in replies), replies
        return [r["result"] for r in replies]

    def entity_registry(self) -> dict[str, dict]:
        """The entity registry (websocket ``config/entity_registry/list``) by entity_id: each entry's
        ``unique_id``, ``platform``, ``device_id``, ``entity_category``, ``name``, ..."""
        return {e["entity_id"]: e for e in self.websocket({"type": "config/entity_registry/list"})[0]}

    def devices(self) -> dict[str, dict]:
        """The device registry (websocket ``config/device_registry/list``) by device id: ``name``,
        ``model``, ``sw_version``, ``manufacturer``, ``configuration_url``, ``identifiers`` (lists)..."""
        return {d["id"]: d for d in self.websocket({"type": "config/device_registry/list"})[0]}
