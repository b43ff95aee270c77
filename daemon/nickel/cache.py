"""Evaluated Nickel values kept on disk, so a new process does not evaluate unchanged files again.

Every `stratum` command is a new process, and so is a restarted daemon: without this, each of them paid the
whole Nickel evaluation (contracts included, seconds for thousands of resources) even when no file changed.
The key (made by daemon/nickel/evaluator.py) covers everything the value depends on: the contract, the contract
library's files, the Nickel engine's build, the file's path and the blob ids of the file and of everything it
imports. Only values are kept (errors are evaluated again, to be reported in full). The directory is the
host's (under the data directory); a damaged entry, or a damaged file, is a miss, never an error. Bounded:
values over MAX_VALUE_BYTES are not kept, and the oldest entries go when there are more than `max_entries`.

The values live in one SQLite file (the standard library's), read and written in batches: one file per value
cost a create, a write and a rename each, seconds at 20,000 files, and as long again to delete the directory.
It is a cache, so it is written without syncing: a crash can only lose entries, and a file SQLite cannot read
is replaced by an empty one. Several processes (the daemon, `stratum plan`) may share it (WAL mode).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

MAX_VALUE_BYTES = 8 * 1024 * 1024
MAX_ENTRIES = 50_000
_FILE = "values.sqlite"
_PARAMS = 500                                   # keys per SELECT (SQLite caps the parameters of a statement)


class DiskCache:
    """JSON values by key in one SQLite file; every failure is a miss (get) or a value not kept (put)."""

    def __init__(self, directory: Path, max_entries: int = MAX_ENTRIES) -> None:
        self.directory = directory
        self.max_entries = max_entries
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / _FILE
        self.existed = self.path.exists()            # an earlier process kept values here (made by prune below)
        self._con: sqlite3.Connection | None = None
        self.prune()

    def _connect(self) -> sqlite3.Connection | None:
        """The open database; a file that is not one SQLite can use is set aside and started afresh."""
        if self._con is not None:
            return self._con
        for attempt in (1, 2):
            try:
                # Callers serialize their use (the evaluator's lock); the connection may move between threads.
                con = sqlite3.connect(self.path, timeout=2.0, isolation_level=None, check_same_thread=False)
                con.execute("PRAGMA journal_mode=WAL")
                con.execute("PRAGMA synchronous=OFF")
                con.execute("CREATE TABLE IF NOT EXISTS v (k TEXT PRIMARY KEY, value TEXT NOT NULL)")
                self._con = con
                return con
            except sqlite3.Error as err:
                with contextlib.suppress(UnboundLocalError, sqlite3.Error):
                    con.close()
                if attempt == 2 or not _damaged(err):
                    return None                          # busy (another process writes): a miss this time
                self._remove()
        return None

    def _remove(self) -> None:
        """Delete a damaged file: a cache is rebuilt, never repaired."""
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(OSError):
                self.path.with_name(_FILE + suffix).unlink()

    def get_many(self, keys: Sequence[str]) -> dict[str, Any]:
        """The kept values of `keys` (absent: not kept or unreadable)."""
        con = self._connect()
        out: dict[str, Any] = {}
        if con is None or not keys:
            return out
        try:
            for i in range(0, len(keys), _PARAMS):
                part = keys[i:i + _PARAMS]
                rows = con.execute(f"SELECT k, value FROM v WHERE k IN ({','.join('?' * len(part))})",
                                   part).fetchall()
                for key, text in rows:
                    try:
                        stored = json.loads(text)
                    except ValueError:
                        continue
                    if isinstance(stored, dict) and "value" in stored:
                        out[key] = stored["value"]
        except sqlite3.Error as err:
            self._reset(err)
        return out

    def get(self, key: str) -> tuple[bool, Any]:
        """(True, value) when `key` is kept, else (False, None)."""
        found = self.get_many([key])
        return (True, found[key]) if key in found else (False, None)

    def put_many(self, items: Iterable[tuple[str, Any]]) -> None:
        """Keep the values (best effort, one transaction: a full disk only costs later evaluations)."""
        rows = []
        for key, value in items:
            text = json.dumps({"value": value}, separators=(",", ":"))
            if len(text) <= MAX_VALUE_BYTES:
                rows.append((key, text))
        con = self._connect()
        if con is None or not rows:
            return
        try:
            con.execute("BEGIN")
            con.executemany("INSERT OR REPLACE INTO v VALUES (?, ?)", rows)
            con.execute("COMMIT")
        except sqlite3.Error as err:
            with contextlib.suppress(sqlite3.Error):
                con.execute("ROLLBACK")
            self._reset(err)

    def put(self, key: str, value: Any) -> None:
        """Keep one value."""
        self.put_many([(key, value)])

    def prune(self) -> int:
        """Remove the oldest entries beyond `max_entries` (down to 80 % of it); returns how many went."""
        con = self._connect()
        if con is None:
            return 0
        try:
            (count,) = con.execute("SELECT count(*) FROM v").fetchone()
            if count <= self.max_entries:
                return 0
            doomed = count - int(self.max_entries * 0.8)
            # rowid grows with every insert (INSERT OR REPLACE gives a replaced key a new one): oldest first.
            con.execute("DELETE FROM v WHERE rowid IN (SELECT rowid FROM v ORDER BY rowid LIMIT ?)", (doomed,))
            return int(doomed)
        except sqlite3.Error as err:
            self._reset(err)
            return 0

    def _reset(self, err: sqlite3.Error | None = None) -> None:
        """Drop the connection after an error (and the file when it is damaged); the next use reopens it."""
        if self._con is not None:
            with contextlib.suppress(sqlite3.Error):
                self._con.close()
            self._con = None
        if err is not None and _damaged(err):
            self._remove()

    def close(self) -> None:
        """Close the database."""
        self._reset()


def _damaged(err: sqlite3.Error) -> bool:
    """A file SQLite cannot use ("not a database", "malformed"), as opposed to a busy one or a full disk."""
    return isinstance(err, sqlite3.DatabaseError) and not isinstance(err, sqlite3.OperationalError)
