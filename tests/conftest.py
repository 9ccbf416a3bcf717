"""Shared fixtures. The reference data is found through EDGED_TESTDATA or ../shared/testdata.

Where it is absent, the tests that need it skip with a reason; with
EDGED_REQUIRE_TESTDATA=1 (set by .ci/run) its absence fails the whole run instead.

What the tests share besides fixtures is the package ``tests/support`` (put on ``sys.path``
here). Tests that start a process or a server are marked ``system``: ``pytest -m "not system"``
runs the others. ``--long`` makes outages and loads last as long as in a soak test.
"""

from __future__ import annotations

import logging
import multiprocessing.process
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:  # ``import support`` whatever pytest's import mode
    sys.path.insert(0, str(TESTS))

import support.durations  # noqa: E402
from support.daemon import Daemon  # noqa: E402


def _find_testdata() -> Path | None:
    env = os.environ.get("EDGED_TESTDATA")
    candidates = [Path(env)] if env else [ROOT.parent / "shared" / "testdata", ROOT / ".." / "shared" / "testdata"]
    for c in candidates:
        if (c / "models").is_dir() and (c / "images").is_dir():
            return c.resolve()
    return None


TESTDATA = _find_testdata()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--long",
        action="store_true",
        default=False,
        help="outages and loads last their long durations (support.durations; or EDGED_LONG_TESTS=1)",
    )


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("long"):
        support.durations.LONG = True


def pytest_sessionstart(session: pytest.Session) -> None:
    if TESTDATA is None and os.environ.get("EDGED_REQUIRE_TESTDATA") == "1":
        raise pytest.UsageError(
            "reference test data not found (set EDGED_TESTDATA or provide ../shared/testdata); "
            "EDGED_REQUIRE_TESTDATA=1 makes its absence a failure"
        )


@pytest.fixture(scope="session")
def testdata() -> Path:
    if TESTDATA is None:
        pytest.skip("reference test data not found: set EDGED_TESTDATA or provide ../shared/testdata")
    return TESTDATA


@pytest.fixture(scope="session")
def models_dir(testdata: Path) -> Path:
    return testdata / "models"


@pytest.fixture(scope="session")
def images_dir(testdata: Path) -> Path:
    return testdata / "images"


@pytest.fixture
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def guest_pool(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """The Debian guests of the selected ``vm`` tests (each test module's ``guest`` fixture is
    parametrised by a :class:`support.vm.Spec`), readied side by side from the first use: built when
    missing, booted, edged installed by deploy/install.sh (support.guest); powered off at the end."""
    from support import guest

    specs: list = []
    for item in request.session.items:
        spec = getattr(item, "callspec", None) and item.callspec.params.get("guest")
        if item.get_closest_marker("vm") and spec is not None and spec not in specs:
            specs.append(spec)
    attach = guest.attached(os.environ.get("EDGED_VM_ATTACH", ""))  # developing the tests: guests kept running

    def ready(spec):
        work = tmp_path_factory.mktemp(spec.name)
        if spec.name in attach:
            return guest.attach(spec, attach[spec.name], work)
        return guest.install(spec, work, ROOT)

    pool = guest.Pool(ready, specs)
    yield pool
    pool.close()


@pytest.fixture
def daemons():
    """Start daemons (``daemons(tmp, config, args, ...)``: a :class:`support.daemon.Daemon`);
    each is killed at the end of the test if it still runs, whatever the test did."""
    started: list[Daemon] = []

    def start(*args, **kwargs) -> Daemon:
        d = Daemon(*args, **kwargs)
        started.append(d)
        return d

    yield start
    for d in started:
        d.kill()


@pytest.fixture(autouse=True)
def _check_the_system_marker(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):
    """With EDGED_CHECK_SYSTEM_MARKS=1, a test not marked ``system`` that starts a process or
    listens on a socket fails, naming what it started (a check of the marks, not run by default)."""
    if os.environ.get("EDGED_CHECK_SYSTEM_MARKS") != "1" or request.node.get_closest_marker("system"):
        yield
        return
    started: list[str] = []
    popen_init, process_start = subprocess.Popen.__init__, multiprocessing.process.BaseProcess.start
    listen = socket.socket.listen

    def checked_popen_init(self, args, *a, **kw):
        started.append(f"process {str(args)[:160]}")
        popen_init(self, args, *a, **kw)

    def checked_process_start(self):
        started.append(f"process {self.name}")
        process_start(self)

    def checked_listen(self, *a):
        started.append(f"a listening socket {self.getsockname()}")
        return listen(self, *a)

    monkeypatch.setattr(subprocess.Popen, "__init__", checked_popen_init)
    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", checked_process_start)
    monkeypatch.setattr(socket.socket, "listen", checked_listen)
    yield
    if started:
        pytest.fail(f"not marked system, but started {'; '.join(sorted(set(started)))}", pytrace=False)


@pytest.fixture
def no_tpus_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Edge TPU discovery sees an empty sysfs and /dev (a test that needs TPUs makes its own tree);
    a module uses it with ``pytestmark = pytest.mark.usefixtures("no_tpus_here")``."""
    (tmp_path / "empty_sys").mkdir()
    (tmp_path / "empty_dev").mkdir()
    monkeypatch.setenv("EDGED_SYSFS_ROOT", str(tmp_path / "empty_sys"))
    monkeypatch.setenv("EDGED_DEV_ROOT", str(tmp_path / "empty_dev"))


@pytest.fixture
def restore_logging():
    """The root logger's handlers and level put back after a test that sets up logging (new handlers closed)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
        if h not in handlers:
            h.close()
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)
