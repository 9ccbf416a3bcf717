"""Log lines as journald expects them: a syslog priority on each line when stderr is the journal."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edged.logs import setup_logging, stderr_is_journal


def journal_of(f, monkeypatch) -> None:
    st = os.fstat(f.fileno())
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")


@pytest.mark.faults
def test_each_line_carries_its_priority_when_stderr_is_the_journal(
    tmp_path: Path, monkeypatch, restore_logging
) -> None:
    """Found: under journald every line landed at priority info, so `journalctl -p warning` showed none."""
    with open(tmp_path / "stream", "w+") as f:
        journal_of(f, monkeypatch)
        assert stderr_is_journal(f)
        setup_logging("debug", "human", stream=f)
        log = logging.getLogger("edged.test")
        log.debug("d")
        log.info("i")
        log.warning("w")
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("e")
        log.critical("c")
        f.flush()
        lines = (tmp_path / "stream").read_text().splitlines()
    assert lines[:3] == ["<7>DEBUG edged.test: d", "<6>INFO edged.test: i", "<4>WARNING edged.test: w"]
    assert lines[3] == "<3>ERROR edged.test: e"
    tb = lines[4 : lines.index("<2>CRITICAL edged.test: c")]
    assert tb and all(line.startswith("<3>") for line in tb) and tb[-1] == "<3>ValueError: boom"  # the whole traceback


def test_json_lines_are_prefixed_too_and_stay_json(tmp_path: Path, monkeypatch, restore_logging) -> None:
    with open(tmp_path / "stream", "w+") as f:
        journal_of(f, monkeypatch)
        setup_logging("info", "json", stream=f)
        logging.getLogger("edged.test").warning("careful", extra={"stream": "door"})
        f.flush()
        line = (tmp_path / "stream").read_text().strip()
    assert line.startswith("<4>{")
    assert json.loads(line[3:])["stream"] == "door"


def test_no_prefix_when_stderr_is_not_the_journal(tmp_path: Path, monkeypatch, restore_logging) -> None:
    """JOURNAL_STREAM inherited by a child whose stderr went elsewhere (a pipe, a file): no prefixes."""
    with open(tmp_path / "other", "w+") as other, open(tmp_path / "stream", "w+") as f:
        journal_of(other, monkeypatch)
        assert not stderr_is_journal(f)
        setup_logging("info", "human", stream=f)
        logging.getLogger("edged.test").warning("w")
        f.flush()
        assert (tmp_path / "stream").read_text() == "WARNING edged.test: w\n"  # (no timestamp: under systemd)
    monkeypatch.setenv("JOURNAL_STREAM", "garbage")
    assert not stderr_is_journal(sys.stderr)


@pytest.mark.system
def test_the_daemon_and_its_errors_under_the_journal(tmp_path: Path) -> None:
    """``edged run`` as systemd starts it (stderr a file whose device and inode JOURNAL_STREAM names):
    every line has its priority, a configuration error too."""
    import signal
    import time

    root = Path(__file__).resolve().parents[1]

    def run(args: list[str], seconds: float) -> tuple[int, str]:
        err = tmp_path / f"stderr-{len(list(tmp_path.iterdir()))}"
        with open(err, "w") as f:
            st = os.fstat(f.fileno())
            env = {**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
            proc = subprocess.Popen([sys.executable, "-m", "edged", "run", *args], stderr=f, env=env, cwd=root)
            try:
                proc.wait(seconds)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)
        return proc.returncode, err.read_text()

    bad = tmp_path / "bad.yaml"
    bad.write_text("streams: []\n")
    code, text = run(["--config", str(bad)], 60)
    assert code == 2 and text.startswith("<3>edged: error: ") and text.count("\n") == 1, text
    t0 = time.monotonic()
    code, text = run(["--listen", "127.0.0.1:0"], 6)  # the embedded demo, stopped after 6 s
    lines = text.splitlines()
    assert code == 0 and time.monotonic() - t0 < 40, text
    assert lines and all(line[:3] in ("<6>", "<4>", "<3>", "<7>") for line in lines), lines[:5]
    assert any(line.startswith("<6>INFO edged") for line in lines), lines[:5]
