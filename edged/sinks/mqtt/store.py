"""A bounded, on-disk FIFO of messages (SQLite in WAL mode): what the MQTT sink has not sent yet.

One table ``queue(id INTEGER PRIMARY KEY AUTOINCREMENT, topic, payload, created)``. ``append``
adds at the end and, when the queue holds ``maxlen`` messages already, deletes the oldest
first (returned as the number dropped); ``peek`` reads the oldest; ``delete_upto`` removes
what was delivered. Messages peeked with ``reserve=True`` (handed to the network, in
flight) are never deleted to make room: they may be delivered, so they are not "dropped";
the queue then holds at most ``maxlen`` plus those in flight. The file outlives the
process: what is in it is sent after a restart.
Safe to use from several threads (one connection behind a lock).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import List, Tuple

Row = Tuple[int, str, str]


class MessageStore:
    def __init__(self, path: str | Path, maxlen: int) -> None:
        if maxlen < 1:
            raise ValueError("maxlen must be >= 1")
        self.path = Path(path)
        self.maxlen = maxlen
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL: a crash of the process loses nothing
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS queue (id INTEGER PRIMARY KEY AUTOINCREMENT, "
            "topic TEXT NOT NULL, payload TEXT NOT NULL, created REAL NOT NULL)"
        )
        self._depth: int = self._db.execute("SELECT COUNT(*) FROM queue").fetchone()[0]
        self._reserved_upto = 0  # messages up to this id are in flight: not dropped to make room

    def __len__(self) -> int:
        return self._depth

    @property
    def depth(self) -> int:
        return self._depth

    def append(self, topic: str, payload: str) -> int:
        """Add one message at the end; returns how many of the oldest were deleted to make room."""
        with self._lock:
            dropped = 0
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if self._depth >= self.maxlen:
                    waiting = self._depth
                    if self._reserved_upto:
                        waiting -= self._db.execute(
                            "SELECT COUNT(*) FROM queue WHERE id <= ?", (self._reserved_upto,)
                        ).fetchone()[0]
                    if waiting >= self.maxlen:
                        cur = self._db.execute(
                            "DELETE FROM queue WHERE id IN (SELECT id FROM queue WHERE id > ? ORDER BY id LIMIT ?)",
                            (self._reserved_upto, waiting - self.maxlen + 1),
                        )
                        dropped = max(cur.rowcount, 0)
                self._db.execute(
                    "INSERT INTO queue (topic, payload, created) VALUES (?, ?, ?)", (topic, payload, time.time())
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._depth += 1 - dropped
            return dropped

    def peek(self, n: int, after_id: int = 0, reserve: bool = False) -> List[Row]:
        """The oldest ``n`` messages with an id above ``after_id``, oldest first.

        ``reserve``: they are about to be sent; ``append`` no longer deletes them to make room.
        """
        with self._lock:
            rows = [
                (int(r[0]), r[1], r[2])
                for r in self._db.execute(
                    "SELECT id, topic, payload FROM queue WHERE id > ? ORDER BY id LIMIT ?", (after_id, n)
                )
            ]
            if reserve and rows:
                self._reserved_upto = max(self._reserved_upto, rows[-1][0])
            return rows

    def delete_upto(self, last_id: int) -> int:
        """Delete every message with an id up to ``last_id``; returns how many there were."""
        with self._lock:
            cur = self._db.execute("DELETE FROM queue WHERE id <= ?", (last_id,))
            n = max(cur.rowcount, 0)
            self._depth -= n
            return n

    def close(self) -> None:
        with self._lock:
            try:
                self._db.close()
            except sqlite3.Error:
                pass
