"""A bounded, on-disk FIFO of messages (SQLite in WAL mode): what the MQTT sink has not sent yet.

One table ``queue(id INTEGER PRIMARY KEY AUTOINCREMENT, topic, payload, created)``. ``append``
adds at the end and, when the queue holds ``maxlen`` messages already, deletes the oldest
first (returned as the number dropped); ``peek`` reads the oldest; ``delete_upto`` removes
what was delivered. Messages peeked with ``reserve=True`` (handed to the network, in
flight) are never deleted to make room: they may be delivered, so they are not "dropped";
the queue then holds at most ``maxlen`` plus those in flight. The file outlives the
process: what is in it is sent after a restart.
Safe to use from several threads (one connection behind a lock).

**It degrades, it never blocks.** Each fault is logged once and reported to ``on_fault``
(``corrupt_file``, ``bad_row``, ``disk_full``), which the sink counts:

* a file that is not a database, or a damaged one, found when it opens, is moved aside
  (``<name>.corrupt-<UTC time>``, with its ``-wal`` and ``-shm``) and a fresh queue started;
* a row that cannot be decoded (a topic or payload that is not UTF-8) is deleted and
  skipped: the rows after it are sent;
* a full disk (``database or disk is full``): a new message then takes the place of the
  oldest waiting one (or, when even that cannot be written, is not kept), returned as
  dropped; a delivered message that cannot be deleted yet is skipped and deleted later.
  Everything works again by itself when there is space.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Callable, List, Optional, Tuple

log = logging.getLogger("edged.sinks.mqtt")  # the name the log lines have always carried

Row = Tuple[int, str, str]
FaultHook = Callable[[str, int], None]  # (fault, how many)

_CORRUPT = (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)
SPACE_AGAIN_BYTES = 64 * 1024  # free on the queue's file system: the disk is no longer full (said once)
WAL_PAGES = 128  # a checkpoint when the WAL has this many pages (SQLite's default, 1000, is 4 MB of a small disk)
WAL_LIMIT_BYTES = 512 * 1024  # what is left of the WAL file after a checkpoint at most


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.Error) and exc.sqlite_errorcode == sqlite3.SQLITE_FULL


class _Damaged(sqlite3.DatabaseError):
    """``PRAGMA quick_check`` found damage."""


def _is_corrupt(exc: sqlite3.Error) -> bool:
    return isinstance(exc, _Damaged) or exc.sqlite_errorcode in _CORRUPT


class MessageStore:
    def __init__(self, path: str | Path, maxlen: int, on_fault: Optional[FaultHook] = None) -> None:
        if maxlen < 1:
            raise ValueError("maxlen must be >= 1")
        self.path = Path(path)
        self.maxlen = maxlen
        self._on_fault = on_fault
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self.moved_to: Optional[Path] = None  # where a corrupt file found at start went
        self.disk_full = False
        self._bad_logged = False
        self._pending_delete = 0  # delivered up to this id, not deleted yet (the disk was full)
        self._bad_ids: set[int] = set()  # rows found undecodable, not deleted yet (the disk was full)
        try:
            self._db, self._depth = self._open()
        except sqlite3.DatabaseError as exc:
            if not _is_corrupt(exc):
                raise
            self._move_aside(exc)
            self._db, self._depth = self._open()
        self._reserved_upto = 0  # messages up to this id are in flight: not dropped to make room

    def _open(self) -> tuple[sqlite3.Connection, int]:
        db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        try:
            db.text_factory = bytes  # decoded here, row by row: one bad row must not hide the others
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # WAL: a crash of the process loses nothing
            db.execute(f"PRAGMA wal_autocheckpoint={WAL_PAGES}")
            db.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")
            db.execute(
                "CREATE TABLE IF NOT EXISTS queue (id INTEGER PRIMARY KEY AUTOINCREMENT, "
                "topic TEXT NOT NULL, payload TEXT NOT NULL, created REAL NOT NULL)"
            )
            check = db.execute("PRAGMA quick_check").fetchone()[0]
            if check != b"ok":
                raise _Damaged(f"quick_check: {check.decode(errors='replace')}")
            depth = int(db.execute("SELECT COUNT(*) FROM queue").fetchone()[0])
        except sqlite3.Error:
            db.close()
            raise
        return db, depth

    def _move_aside(self, exc: sqlite3.Error) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        for suffix in ("", "-wal", "-shm"):
            src = Path(f"{self.path}{suffix}")
            if src.exists():
                src.rename(f"{target}{suffix}")
        self.moved_to = target
        log.error(
            "mqtt queue %s is damaged (%s): moved aside to %s (the results in it are not sent); "
            "starting an empty queue",
            self.path,
            exc,
            target,
        )
        self._fault("corrupt_file")

    def _fault(self, fault: str, n: int = 1) -> None:
        if self._on_fault is not None:
            self._on_fault(fault, n)

    def __len__(self) -> int:
        return self._depth

    @property
    def depth(self) -> int:
        return self._depth

    def last_id(self) -> int:
        """The id of the newest message queued (0: none)."""
        with self._lock:
            return int(self._db.execute("SELECT COALESCE(MAX(id), 0) FROM queue").fetchone()[0])

    # ------------------------------------------------------------------ writing
    def append(self, topic: str, payload: str) -> int:
        """Add one message at the end; returns how many of the oldest were deleted to make room.

        On a full disk the message takes the place of the oldest waiting one, or is not kept:
        either way one result is dropped (returned); the error is not raised.
        """
        with self._lock:
            try:
                dropped = self._insert(topic, payload)
            except sqlite3.Error as exc:
                if not is_disk_full(exc):
                    raise
                self._full(exc)
                return self._insert_when_full(topic, payload)
            if self.disk_full:
                self._space_again()
            return dropped

    def _insert_when_full(self, topic: str, payload: str) -> int:
        """The disk is full: free the WAL's old frames, then insert, else replace the oldest, else drop it."""
        self._checkpoint()
        for force in (False, True):
            try:
                return self._insert(topic, payload, force)
            except sqlite3.Error as exc:
                if not is_disk_full(exc):
                    raise
        return 1  # not even that: this one is not kept

    def _checkpoint(self) -> bool:
        """Copy the WAL into the database and truncate it (its old frames take much of a full disk); done?"""
        try:
            busy = self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        except sqlite3.Error as exc:
            log.debug("mqtt queue %s: checkpoint: %s", self.path, exc)
            return False
        return not busy

    def _insert(self, topic: str, payload: str, force: bool = False) -> int:
        """One transaction: make room (the bound; ``force``: one more), insert; how many were deleted."""
        dropped = 0
        self._db.execute("BEGIN IMMEDIATE")
        try:
            if self._depth >= self.maxlen or force:
                waiting = self._depth
                if self._reserved_upto:
                    waiting -= self._db.execute(
                        "SELECT COUNT(*) FROM queue WHERE id <= ?", (self._reserved_upto,)
                    ).fetchone()[0]
                excess = waiting - self.maxlen + 1
                if force:
                    excess = min(max(excess, 1), waiting)
                if excess > 0:
                    cur = self._db.execute(
                        "DELETE FROM queue WHERE id IN (SELECT id FROM queue WHERE id > ? ORDER BY id LIMIT ?)",
                        (self._reserved_upto, excess),
                    )
                    dropped = max(cur.rowcount, 0)
            self._db.execute(
                "INSERT INTO queue (topic, payload, created) VALUES (?, ?, ?)", (topic, payload, time.time())
            )
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:  # (SQLite may have rolled back by itself, a full disk does)
                self._db.execute("ROLLBACK")
            raise
        self._depth += 1 - dropped
        return dropped

    def _full(self, exc: sqlite3.Error) -> None:
        if not self.disk_full:
            self.disk_full = True
            log.error(
                "mqtt queue %s: disk full (%s): each new result replaces the oldest queued one, or is dropped, "
                "until there is space again",
                self.path,
                exc,
            )
            self._fault("disk_full")

    def _space_again(self) -> None:
        """After a write that worked while the disk was full: the WAL truncated, is there space again?"""
        if not self._checkpoint():  # (a checkpoint needs space in the database file: it works once there is)
            return
        try:
            st = os.statvfs(self.path.parent)
        except OSError:
            return
        if st.f_bavail * st.f_frsize >= SPACE_AGAIN_BYTES:
            self.disk_full = False
            log.info("mqtt queue %s: there is space on the disk again: every result is queued again", self.path)

    def delete_upto(self, last_id: int) -> int:
        """Delete every message with an id up to ``last_id``; returns how many there were.

        On a full disk they stay (skipped by ``peek``) and are deleted by a later call.
        """
        with self._lock:
            upto = max(last_id, self._pending_delete)
            try:
                cur = self._delete_upto(upto)
            except sqlite3.Error as exc:
                if not is_disk_full(exc):
                    raise
                self._full(exc)
                self._pending_delete = upto
                return 0
            self._pending_delete = 0
            self._bad_ids = {i for i in self._bad_ids if i > upto}
            n = max(cur.rowcount, 0)
            self._depth -= n
            return n

    def _delete_upto(self, upto: int) -> sqlite3.Cursor:
        try:
            return self._db.execute("DELETE FROM queue WHERE id <= ?", (upto,))
        except sqlite3.Error as exc:
            if not is_disk_full(exc):
                raise
            self._checkpoint()
            return self._db.execute("DELETE FROM queue WHERE id <= ?", (upto,))

    # ------------------------------------------------------------------ reading
    def peek(self, n: int, after_id: int = 0, reserve: bool = False) -> List[Row]:
        """The oldest ``n`` messages with an id above ``after_id``, oldest first.

        ``reserve``: they are about to be sent; ``append`` no longer deletes them to make room.
        A row that cannot be decoded is deleted and skipped (reported as ``bad_row``).
        """
        with self._lock:
            after = max(after_id, self._pending_delete)
            rows: List[Row] = []
            bad: List[int] = []
            for rid, topic, payload in self._db.execute(
                "SELECT id, topic, payload FROM queue WHERE id > ? ORDER BY id LIMIT ?", (after, n)
            ):
                if rid in self._bad_ids:
                    continue
                try:
                    rows.append((int(rid), bytes(topic).decode(), bytes(payload).decode()))
                except (UnicodeDecodeError, TypeError) as exc:
                    bad.append(int(rid))
                    self._bad_row(int(rid), exc)
            if bad:
                self._drop_bad(bad)
            if reserve and rows:
                self._reserved_upto = max(self._reserved_upto, rows[-1][0])
            return rows

    def _bad_row(self, rid: int, exc: Exception) -> None:
        if not self._bad_logged:
            self._bad_logged = True
            log.error(
                "mqtt queue %s: queued result %d cannot be read (%s: %s): skipped and deleted "
                "(more are counted, not logged)",
                self.path,
                rid,
                type(exc).__name__,
                exc,
            )
        self._fault("bad_row")

    def _drop_bad(self, ids: List[int]) -> None:
        try:
            cur = self._db.execute(f"DELETE FROM queue WHERE id IN ({','.join('?' * len(ids))})", ids)
            self._depth -= max(cur.rowcount, 0)
        except sqlite3.Error as exc:
            if not is_disk_full(exc):
                raise
            self._full(exc)
            self._bad_ids.update(ids)  # skipped meanwhile; deleted with the delivered ones before them
            return
        self._bad_ids.difference_update(ids)

    def close(self) -> None:
        with self._lock:
            try:
                self._db.close()
            except sqlite3.Error:
                pass
