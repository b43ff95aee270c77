"""The `postgresql` backend (psycopg 3): one table, one row per entry; every write is one autocommitted statement.

The table is `vault_kv (path text COLLATE "C" PRIMARY KEY, value bytea)`, so a LIST is an index range scan. A
lost connection is reopened on the next call; while the server is away every call raises StorageUnavailable
(503 to clients) and nothing is half-written: a statement commits whole or not at all.
"""

from __future__ import annotations

import threading
from typing import Any

import psycopg

from reconcilers.vault.service.storage.base import StorageUnavailable, check_path, check_prefix

TABLE = "vault_kv"
_SCHEMA = f'CREATE TABLE IF NOT EXISTS {TABLE} (path text COLLATE "C" PRIMARY KEY, value bytea NOT NULL)'
_LIST = (f"SELECT DISTINCT CASE WHEN strpos(rest, '/') > 0 THEN left(rest, strpos(rest, '/')) ELSE rest END "
         f"FROM (SELECT substr(path, %s) AS rest FROM {TABLE} WHERE path >= %s AND path < %s) AS t")


class PostgresStore:
    """A KeyValueStore in a PostgreSQL table (`url`: a libpq connection string or URI)."""

    name = "postgresql"

    def __init__(self, url: str, timeout_s: float = 5.0) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self._conn: psycopg.Connection[Any] | None = None
        self._lock = threading.Lock()
        self.guard: tuple[int, int] | None = None
        self._run(_SCHEMA, ())

    def _connect(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self.url, autocommit=True, connect_timeout=max(1, int(self.timeout_s)),
                                         options=f"-c statement_timeout={int(self.timeout_s * 1000)}")
        return self._conn

    def _run(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                cur = self._connect().execute(sql, params)
                return cur.fetchall() if cur.description else []
            except psycopg.Error as err:
                # The connection may be dead (server stopped): drop it so the next call reconnects.
                if self._conn is not None:
                    try:
                        self._conn.close()
                    except psycopg.Error:
                        pass  # already broken; we only wanted it gone
                self._conn = None
                # Never the URL in the message: it may carry a password.
                raise StorageUnavailable(self.name, type(err).__name__ + ": " +
                                         str(err).splitlines()[0][:160]) from err

    def get(self, path: str) -> bytes | None:
        """The value at `path`, or None."""
        rows = self._run(f"SELECT value FROM {TABLE} WHERE path = %s", (check_path(path),))
        return bytes(rows[0][0]) if rows else None

    def set_guard(self, lock_key: int | None, pid: int = 0) -> None:
        """HA fencing: while set, a write applies only if the session `pid` still holds advisory lock `lock_key`
        (checked in the same statement), so a node that lost the lock cannot write."""
        self.guard = (lock_key, pid) if lock_key is not None else None

    def _guard_sql(self) -> tuple[str, tuple[Any, ...]]:
        if self.guard is None:
            return "", ()
        key, pid = self.guard
        return (" AND EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND classid = 0 AND objid = %s"
                " AND objsubid = 1 AND pid = %s AND granted)", (key, pid))

    def _fenced(self, rows: list[tuple[Any, ...]]) -> None:
        if self.guard is not None and not rows:
            raise StorageUnavailable(self.name, "this node no longer holds the active lock (HA); nothing was "
                                                "written: send the request to the active node")

    def put(self, path: str, value: bytes) -> None:
        """Insert or replace, in one statement (under HA, only while this node holds the lock)."""
        guard, args = self._guard_sql()
        rows = self._run(f"INSERT INTO {TABLE} (path, value) SELECT %s, %s WHERE TRUE{guard} "
                         "ON CONFLICT (path) DO UPDATE SET value = EXCLUDED.value RETURNING 1",
                         (check_path(path), value, *args))
        self._fenced(rows)

    def delete(self, path: str) -> None:
        """Remove `path` (under HA, only while this node holds the lock)."""
        guard, args = self._guard_sql()
        if self.guard is None:
            self._run(f"DELETE FROM {TABLE} WHERE path = %s", (check_path(path),))
            return
        rows = self._run(f"SELECT 1 WHERE TRUE{guard}", args)
        self._fenced(rows)
        self._run(f"DELETE FROM {TABLE} WHERE path = %s AND EXISTS (SELECT 1 WHERE TRUE{guard})",
                  (check_path(path), *args))

    def list(self, prefix: str) -> list[str]:
        """Direct children under `prefix`."""
        check_prefix(prefix)
        rows = self._run(_LIST, (len(prefix) + 1, prefix, prefix + "\U0010ffff"))
        return sorted(str(r[0]) for r in rows if r[0])

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
