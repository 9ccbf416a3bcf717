"""The Edge TPU worker child's reading and sending threads never end silently."""

from __future__ import annotations

import pickle
import queue

import pytest

from edged import worker_child


class Conn:
    def __init__(self, recv: list, send_error: Exception | None = None) -> None:
        self._recv = list(recv)
        self.sent: list = []
        self.send_error = send_error

    def recv(self):
        item = self._recv.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item

    def send(self, reply) -> None:
        if self.send_error is not None:
            raise self.send_error
        self.sent.append(reply)


def test_a_request_that_cannot_be_read_ends_the_child_and_says_so(capsys) -> None:
    inbox: queue.SimpleQueue = queue.SimpleQueue()
    worker_child._read_requests(Conn([("infer", 1), pickle.UnpicklingError("invalid load key, 'x'.")]), inbox)
    assert inbox.get_nowait() == ("infer", 1) and inbox.get_nowait() is None  # the main loop ends
    err = capsys.readouterr().err
    assert "edged worker: a request cannot be read (UnpicklingError: invalid load key, 'x'.); the worker ends" in err
    assert err.count("\n") == 1


def test_the_parent_gone_ends_the_reader_quietly(capsys) -> None:
    inbox: queue.SimpleQueue = queue.SimpleQueue()
    worker_child._read_requests(Conn([EOFError()]), inbox)
    assert inbox.get_nowait() is None and capsys.readouterr().err == ""


def test_a_reply_that_cannot_be_sent_ends_the_child_at_once(monkeypatch, capsys) -> None:
    exits: list[int] = []

    def exit_(code: int) -> None:
        exits.append(code)
        raise SystemExit(code)

    monkeypatch.setattr(worker_child.os, "_exit", exit_)
    replies: queue.SimpleQueue = queue.SimpleQueue()
    replies.put(("ok", 1))
    with pytest.raises(SystemExit):
        worker_child._send_replies(Conn([], TypeError("cannot pickle '_thread.lock' object")), replies)
    assert exits == [1]
    assert "a reply cannot be sent (TypeError: cannot pickle '_thread.lock' object); the worker ends" in (
        capsys.readouterr().err
    )
