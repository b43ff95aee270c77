"""The agents' DuckDB file (`<data-dir>/agents.duckdb`): queue, executions, spend, schedules, checks, audit.

One process holds it open for writing (the daemon's agents service, or a CLI verb when no daemon runs): DuckDB
allows one writer process, and opening and closing it per operation costs ~150 ms here. Inside the process
one connection is shared under a lock (a DuckDB connection is not safe for concurrent use by threads).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb

from reconcilers.errors import StratumError

SCHEMA = """
CREATE TABLE IF NOT EXISTS queue (
  id VARCHAR PRIMARY KEY, role VARCHAR NOT NULL, task VARCHAR NOT NULL, spec VARCHAR NOT NULL,
  trigger VARCHAR NOT NULL, idem_key VARCHAR, state VARCHAR NOT NULL, attempts INTEGER NOT NULL,
  max_attempts INTEGER NOT NULL, backoff DOUBLE NOT NULL, available_at DOUBLE NOT NULL, leased_until DOUBLE,
  lease_owner VARCHAR, enqueued_at DOUBLE NOT NULL, finished_at DOUBLE, last_error VARCHAR, result VARCHAR);
CREATE INDEX IF NOT EXISTS queue_ready ON queue (state, role, available_at);
CREATE TABLE IF NOT EXISTS idempotency (key VARCHAR PRIMARY KEY, message VARCHAR, result VARCHAR, at_ts DOUBLE);
CREATE TABLE IF NOT EXISTS executions (
  id VARCHAR PRIMARY KEY, message VARCHAR, task VARCHAR, task_type VARCHAR, role VARCHAR, agent VARCHAR,
  provider VARCHAR, trigger VARCHAR, started DOUBLE, finished DOUBLE, outcome VARCHAR, tokens_in BIGINT,
  tokens_out BIGINT, cost DOUBLE, summary VARCHAR, error VARCHAR, attempt INTEGER, quality DOUBLE,
  rule VARCHAR, explain VARCHAR);
CREATE INDEX IF NOT EXISTS executions_task ON executions (task, finished);
CREATE TABLE IF NOT EXISTS tool_calls (
  execution VARCHAR, agent VARCHAR, role VARCHAR, tool VARCHAR, allowed BOOLEAN, reason VARCHAR, at_ts DOUBLE);
CREATE TABLE IF NOT EXISTS shipped (id VARCHAR PRIMARY KEY);
CREATE TABLE IF NOT EXISTS last_fire (job VARCHAR PRIMARY KEY, at_ts DOUBLE);
CREATE TABLE IF NOT EXISTS budget_events (role VARCHAR, period VARCHAR, threshold INTEGER, at_ts DOUBLE,
  spent DOUBLE, cap DOUBLE);
CREATE TABLE IF NOT EXISTS check_state (check_id VARCHAR PRIMARY KEY, healthy BOOLEAN, failures INTEGER,
  successes INTEGER, last_at DOUBLE, message VARCHAR);
"""


class StoreError(StratumError):
    """The agents' DuckDB file cannot be opened (another process holds it) or is corrupt."""


class Store:
    """One DuckDB connection to the agents' file, used under a lock."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._con = duckdb.connect(str(path))
        except duckdb.IOException as err:
            raise StoreError(f"cannot open {path}: {str(err).splitlines()[0]}", where=str(path),
                             hint="another Stratum process (the daemon?) holds the agents' queue; ask it "
                                  "(its requests spool) or stop it") from err
        # Executions hold task outputs and errors: readable by the daemon's user only.
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)
        self._lock = threading.RLock()
        self._depth = 0                     # transactions open (only ever the thread holding the lock)
        with self._lock:
            for stmt in SCHEMA.split(";"):
                if stmt.strip():
                    self._con.execute(stmt)

    @contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """The connection inside BEGIN/COMMIT (rolled back on error), under the lock. Nested in a transaction
        of the same thread it joins it: the outer one commits (one commit costs ~5 ms here, a statement ~1)."""
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield self._con
                finally:
                    self._depth -= 1
                return
            self._con.execute("BEGIN")
            self._depth = 1
            try:
                yield self._con
            except BaseException:
                self._con.execute("ROLLBACK")
                raise
            finally:
                self._depth = 0
            self._con.execute("COMMIT")

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        """One statement."""
        with self._lock:
            self._con.execute(sql, list(params))

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Rows of one query."""
        with self._lock:
            return self._con.execute(sql, list(params)).fetchall()

    def dicts(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Rows of one query as dicts."""
        with self._lock:
            cur = self._con.execute(sql, list(params))
            names = [d[0] for d in cur.description or ()]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def close(self) -> None:
        """Close the connection (checkpoints the file)."""
        with self._lock:
            self._con.close()
