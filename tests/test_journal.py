"""journald's native protocol: each record a datagram of journal fields, to a real unix datagram
socket standing in for /run/systemd/journal/socket; the stderr line when journald cannot take it."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import sys
import time
from pathlib import Path

import pytest
from support.daemon import ROOT, Daemon
from support.journal import FakeJournal, parse
from support.wait import wait_for

from edged import journal as journal_mod
from edged.journal import JournalHandler, encode, field_name
from edged.logs import Fields, setup_logging


@pytest.fixture
def journal(tmp_path: Path, monkeypatch, restore_logging):
    """(the fake journal, the stderr file JOURNAL_STREAM names); the socket named by EDGED_JOURNAL_SOCKET."""
    fake = FakeJournal(tmp_path / "socket")
    monkeypatch.setenv("EDGED_JOURNAL_SOCKET", str(fake.path))
    with open(tmp_path / "stderr", "w+") as f:
        st = os.fstat(f.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        yield fake, f
    fake.close()


def stderr_text(f) -> str:
    f.flush()
    return Path(f.name).read_text()


def handler() -> JournalHandler:
    (h,) = logging.getLogger().handlers
    assert isinstance(h, JournalHandler)
    return h


def test_each_record_is_a_datagram_of_journal_fields(journal) -> None:
    fake, f = journal
    setup_logging("debug", "human", stream=f)
    log = logging.getLogger("edged.test")
    levels = [(log.debug, "7"), (log.info, "6"), (log.warning, "4"), (log.error, "3"), (log.critical, "2")]
    for call, _ in levels:
        call("stream %s: %s", "cam", call.__name__, extra={"stream": "cam", "stage": "source"})
    line = sys._getframe().f_lineno - 1
    entries = fake.entries()
    assert [e["PRIORITY"] for e in entries] == [p for _, p in levels]
    assert [e["MESSAGE"] for e in entries] == [f"stream cam: {c.__name__}" for c, _ in levels]
    e = entries[2]
    assert {k: e[k] for k in ("SYSLOG_IDENTIFIER", "LOGGER", "EDGED_STREAM", "EDGED_STAGE")} == {
        "SYSLOG_IDENTIFIER": "edged",
        "LOGGER": "edged.test",
        "EDGED_STREAM": "cam",
        "EDGED_STAGE": "source",
    }
    code = (e["CODE_FILE"], e["CODE_LINE"], e["CODE_FUNC"])
    assert code == (__file__, str(line), "test_each_record_is_a_datagram_of_journal_fields")
    assert stderr_text(f) == ""  # nothing twice
    assert handler().sent == 5 and handler().fell_back == 0


def test_a_traceback_goes_whole_in_the_binary_form(journal) -> None:
    fake, f = journal
    setup_logging("info", "json", stream=f)  # the format of the stderr lines; the journal gets fields
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        logging.getLogger("edged.test").exception("stream %s: failed", "cam", extra={"stream": "cam"})
    data = fake.sock.recv(1 << 16)
    assert b"\nMESSAGE\n" in b"\n" + data  # length-prefixed, not KEY=value
    e = parse(data)
    lines = e["MESSAGE"].splitlines()
    assert lines[0] == "stream cam: failed" and lines[1] == "Traceback (most recent call last):", lines
    assert lines[-2:] == ["ValueError: boom", "second line"] and e["PRIORITY"] == "3"
    assert e["EDGED_STREAM"] == "cam"


def test_extra_keys_become_edged_fields(journal) -> None:
    fake, f = journal
    setup_logging("info", "human", stream=f)
    log = Fields(logging.getLogger("edged.test"), {"stream": "door", "accelerator": "edgetpu"})
    log.info("m", extra={"tpu": "usb:0", "frame-rate": 2.5, "accelerator": "cpu", "gone": None})
    (e,) = fake.entries()
    assert e["EDGED_STREAM"] == "door" and e["EDGED_TPU"] == "usb:0" and e["EDGED_FRAME_RATE"] == "2.5"
    assert e["EDGED_ACCELERATOR"] == "cpu"  # the call's own extra wins over the adapter's
    assert "EDGED_GONE" not in e
    assert field_name("a" * 100) == "EDGED_" + "A" * 58 and field_name("ü.x") == "EDGED___X"


def test_the_json_format_carries_the_same_fields(tmp_path: Path, monkeypatch, restore_logging) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    with open(tmp_path / "stderr", "w+") as f:
        setup_logging("info", "json", stream=f)
        Fields(logging.getLogger("edged.test"), {"stream": "door"}).warning("w", extra={"stage": "decode"})
        out = json.loads(stderr_text(f))
    assert (out["stream"], out["stage"], out["level"], out["msg"]) == ("door", "decode", "warning", "w")


def test_a_record_too_big_for_a_datagram_goes_as_a_sealed_memfd(journal) -> None:
    fake, f = journal
    setup_logging("info", "human", stream=f)
    h = handler()
    h.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # the kernel's limit of one datagram
    big = "x" * (64 * h.sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF))
    logging.getLogger("edged.test").warning("%s", big, extra={"stream": "cam"})
    (e,) = fake.entries()
    assert fake.memfds == 1 and e["MESSAGE"] == big and e["EDGED_STREAM"] == "cam"
    assert stderr_text(f) == ""


def test_the_stderr_line_when_the_socket_is_gone(journal) -> None:
    """journald stopped (its socket removed): the record comes out on stderr with its priority."""
    fake, f = journal
    setup_logging("info", "human", stream=f)
    log = logging.getLogger("edged.test")
    log.info("before")
    before = [e["MESSAGE"] for e in fake.entries()]
    fake.close()
    fake.path.unlink()
    log.warning("after", extra={"stream": "cam"})
    log.error("and its traceback", exc_info=ValueError("boom"))
    assert before == ["before"]
    lines = stderr_text(f).splitlines()
    assert lines == ["<4>WARNING edged.test: after", "<3>ERROR edged.test: and its traceback", "<3>ValueError: boom"]
    assert handler().fell_back == 2


def test_a_full_journal_delays_a_record_then_sends_it_to_stderr(journal, monkeypatch) -> None:
    """journald not reading (its queue full): each record waits SEND_TIMEOUT at most, none is lost."""
    fake, f = journal
    monkeypatch.setattr(journal_mod, "SEND_TIMEOUT", 0.05)
    setup_logging("info", "human", stream=f)
    log = logging.getLogger("edged.test")
    t0 = time.monotonic()
    for i in range(40):
        log.info("n %d", i)
    took = time.monotonic() - t0
    h = handler()
    got = [e["MESSAGE"] for e in fake.entries()]
    on_stderr = [line.removeprefix("<6>INFO edged.test: ") for line in stderr_text(f).splitlines()]
    assert h.fell_back > 0 and h.sent + h.fell_back == 40, (h.sent, h.fell_back)
    assert sorted(got + on_stderr, key=lambda m: int(m.split()[1])) == [f"n {i}" for i in range(40)]
    assert len(got) == h.sent and took < 40 * 0.05 + 2, took


def test_no_native_protocol_without_the_socket_or_off_the_journal(tmp_path: Path, monkeypatch, restore_logging) -> None:
    """No socket: the prefixed stderr lines; a socket but stderr a terminal (systemd-run -t, a
    shell on a systemd board): plain lines; EDGED_JOURNAL_SOCKET empty: never the socket."""
    fake = FakeJournal(tmp_path / "socket")
    with open(tmp_path / "stderr", "w+") as f, open(tmp_path / "other", "w") as other:
        st = os.fstat(f.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        for value in (str(tmp_path / "none"), str(tmp_path / "stderr"), ""):  # absent, not a socket, off
            monkeypatch.setenv("EDGED_JOURNAL_SOCKET", value)
            setup_logging("info", "human", stream=f)
            logging.getLogger("edged.test").warning("w %s", value)
        monkeypatch.setenv("EDGED_JOURNAL_SOCKET", str(fake.path))
        setup_logging("info", "human", stream=other)
        logging.getLogger("edged.test").warning("terminal")
        other.flush()
        assert stderr_text(f).splitlines() == [
            f"<4>WARNING edged.test: w {tmp_path / 'none'}",
            f"<4>WARNING edged.test: w {tmp_path / 'stderr'}",
            "<4>WARNING edged.test: w ",
        ]
    assert "WARNING edged.test: terminal" in (tmp_path / "other").read_text()
    assert fake.entries() == []
    fake.close()


def test_a_record_that_cannot_be_encoded_or_sent_never_raises(journal) -> None:
    fake, f = journal
    setup_logging("info", "human", stream=f)
    logging.getLogger("edged.test").warning("%d", "not a number")  # a bad format: logging's own report
    logging.getLogger("edged.test").warning("surrogate \udcff", extra={"stream": "c\udcffam"})
    entries = fake.entries()
    assert handler().fell_back == 1 and len(entries) == 1  # the bad one to the fallback, which reports it
    assert entries[0]["MESSAGE"] == "surrogate ?" and entries[0]["EDGED_STREAM"] == "c?am"  # valid UTF-8
    assert encode([("K", "a\nb")]) == b"K\n" + (3).to_bytes(8, "little") + b"a\nb\n"


@pytest.mark.system
def test_the_daemon_logs_its_streams_fields_to_the_journal(tmp_path: Path, testdata: Path) -> None:
    """``edged run`` as systemd starts it (JOURNAL_STREAM names its stderr, journald's socket is
    there): the stream's lines carry EDGED_STREAM, a stream's warning too, none goes to stderr."""
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(testdata / "images" / "grace_hopper.bmp", images / "a.bmp")
    (images / "b.jpg").write_bytes(b"not a jpeg")
    fake = FakeJournal(tmp_path / "socket")
    err = tmp_path / "edged.stderr"
    err.touch()
    st = os.stat(err)
    config = {
        "streams": [
            {
                "id": "cam",
                "source": {"type": "images", "path": str(images), "fps": 20},
                "model": {"path": str(ROOT / "models/digits_int8.tflite")},
                "sinks": [],
            }
        ]
    }
    env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}", "EDGED_JOURNAL_SOCKET": str(fake.path)}
    d = Daemon(tmp_path / "edged", config, ["--listen", "127.0.0.1:0"], env=env, stderr=err)
    try:

        def cam(entries: list[dict[str, str]]) -> list[dict[str, str]]:
            return [e for e in entries if e.get("EDGED_STREAM") == "cam"]

        warned = wait_for(lambda: [e for e in cam(fake.entries()) if e["PRIORITY"] == "4"], 60, "the stream's warning")
        assert d.stop() == 0
    finally:
        d.stop()
    entries = fake.entries()
    assert "skipping" in warned[0]["MESSAGE"] and "b.jpg" in warned[0]["MESSAGE"], warned
    started = [e for e in cam(entries) if "digits_int8" in e["MESSAGE"]]
    assert started and started[0]["EDGED_ACCELERATOR"] == "cpu" and started[0]["PRIORITY"] == "6", cam(entries)
    assert all(e["SYSLOG_IDENTIFIER"] == "edged" for e in entries)
    assert any(e["MESSAGE"] == "stopped" for e in entries), [e["MESSAGE"] for e in entries]
    assert err.read_text() == "", err.read_text()
    fake.close()
