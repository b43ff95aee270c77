"""The DuckDB index: versioned schema migrations, the single writer, and the queries the CLI and API use.

The daemon is the only writer. While it runs, the CLI asks it over the unix socket
(daemon/service/control_socket.py) and opens no database itself; without a daemon, the CLI opens the file directly.
A corrupt or unreadable file is moved aside (kept, never deleted) and rebuilt from git (daemon/index/rebuild.py)
with a clear message, only when DuckDB itself says the file is not a database it can read; an I/O error (EACCES,
EROFS, ENOSPC) is never corruption."""

from __future__ import annotations

import contextlib
import json
import re
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import duckdb

from daemon.errors import IndexError_, LockError
from daemon.run.journal import Journal
from reconcilers.base import Action, InventoryItem, Problem, ResourceRow

CORE_MIGRATIONS: tuple[str, ...] = (
    # 1: the records of the spine
    """
    CREATE TABLE revisions (
        id TEXT PRIMARY KEY, parents TEXT, author TEXT, email TEXT, committed_at DOUBLE,
        message TEXT, seen_at DOUBLE, status TEXT DEFAULT 'seen', run_id TEXT);
    CREATE TABLE runs (
        id TEXT PRIMARY KEY, revision TEXT, trigger TEXT, status TEXT, started DOUBLE, finished DOUBLE,
        duration_ms DOUBLE, message TEXT DEFAULT '', problems TEXT DEFAULT '[]', plan TEXT DEFAULT '[]',
        base_revision TEXT, reconcilers TEXT DEFAULT '[]');
    CREATE TABLE actions (
        run_id TEXT, seq INTEGER, action_id TEXT, reconciler TEXT, kind TEXT, target TEXT, summary TEXT,
        status TEXT, started DOUBLE, finished DOUBLE, message TEXT DEFAULT '', action TEXT,
        PRIMARY KEY (run_id, seq));
    CREATE TABLE inventory (
        reconciler TEXT, resource_id TEXT, kind TEXT, data TEXT, revision TEXT, updated DOUBLE,
        PRIMARY KEY (reconciler, resource_id));
    CREATE TABLE events (
        ts DOUBLE, kind TEXT, reconciler TEXT, subject TEXT, message TEXT, revision TEXT);
    CREATE TABLE resources (
        revision TEXT, reconciler TEXT, resource_id TEXT, kind TEXT, path TEXT, spec_hash TEXT);
    CREATE TABLE changed_files (revision TEXT, path TEXT, blob_id TEXT, change TEXT);
    CREATE TABLE state (key TEXT PRIMARY KEY, value TEXT);
    """,
)


def _split(sql: str) -> list[str]:
    return [s.strip() for s in sql.split(";") if s.strip()]


def ensure_schema(con: duckdb.DuckDBPyConnection, component: str, migrations: Sequence[str]) -> int:
    """Apply the not-yet-applied migrations of `component` in order; returns the schema version reached.

    Each component (core, knowledge, vault, ...) versions its own tables in `schema_version`.
    """
    con.execute("CREATE TABLE IF NOT EXISTS schema_version (component TEXT PRIMARY KEY, version INTEGER)")
    row = con.execute("SELECT version FROM schema_version WHERE component = ?", [component]).fetchone()
    current = int(row[0]) if row else 0
    for number, sql in enumerate(migrations[current:], start=current + 1):
        con.execute("BEGIN TRANSACTION")
        try:
            for statement in _split(sql):
                con.execute(statement)
            con.execute("INSERT OR REPLACE INTO schema_version VALUES (?, ?)", [component, number])
            con.execute("COMMIT")
        except Exception:
            con.execute("ROLLBACK")
            raise
    return len(migrations)


def _is_lock_error(err: Exception) -> bool:
    text = str(err).lower()
    return "lock" in text and ("conflicting" in text or "could not set" in text)


# What DuckDB itself says when a file is not (or no longer) a database it can read. Only these count as
# corruption: never our own arithmetic on the file (free blocks make DuckDB's block count exceed the file's
# size in a healthy index, which once moved whole run histories aside).
_CORRUPT = ("not a valid duckdb database file", "could not read enough bytes", "checksum", "corrupt",
            "version number")
# The operating system's errors: the file may be fine, the disk or the mount is not. Never corruption.
_IO = ("permission denied", "read-only file system", "no space left", "input/output error", "disk quota",
       "too many open files", "operation not permitted")


def is_io_error(err: BaseException) -> bool:
    """True when `err` is the operating system refusing an operation (EACCES, EROFS, ENOSPC, EIO, ...)."""
    if isinstance(err, OSError):
        return True
    text = str(err).lower()
    return any(marker in text for marker in _IO)


def is_corrupt(err: BaseException) -> bool:
    """True only when DuckDB says the file is not a database it can read (never for an I/O error)."""
    if is_io_error(err) or _is_lock_error(err if isinstance(err, Exception) else Exception(str(err))):
        return False
    text = str(err).lower()
    return any(marker in text for marker in _CORRUPT)


def lock_holder(err: BaseException) -> str:
    """`PID n` of the process DuckDB names as holding the file, or ""."""
    found = re.search(r"\(PID (\d+)\)", str(err))
    return f"pid {found.group(1)}" if found else ""


# Journaled writes: the hot path of an apply (see daemon/run/journal.py).
_JOURNALED = {
    "checkpoint": "INSERT OR REPLACE INTO actions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    "put_inventory": "INSERT OR REPLACE INTO inventory VALUES (?, ?, ?, ?, ?, ?)",
    "drop_inventory": "DELETE FROM inventory WHERE reconciler = ? AND resource_id = ?",
}
_BATCH = 2048
REOPEN_WAIT_S = 30.0      # how long a use after release() waits out a foreign process holding the file
_BULK = {"checkpoint": ("actions", 12), "put_inventory": ("inventory", 6)}


def _runs_of(records: Sequence[tuple[str, list[Any]]]) -> list[tuple[str, list[list[Any]]]]:
    """Consecutive records of the same operation, grouped (order between groups is kept)."""
    out: list[tuple[str, list[list[Any]]]] = []
    for op, params in records:
        if out and out[-1][0] == op:
            out[-1][1].append(params)
        else:
            out.append((op, [params]))
    return out


class Index:
    """One DuckDB file, opened by one writer. Methods are thread-safe (one connection, one lock).

    Checkpoints and inventory changes go through the journal first and reach DuckDB in batches; every read
    and every other write flushes them first, so callers always read their own writes.
    """

    def __init__(self, path: Path, *, read_only: bool = False) -> None:
        self.path = path
        self.read_only = read_only
        self.rebuilt_reason: str | None = None
        self._lock = threading.RLock()
        if str(path) != ":memory:" and not read_only:
            path.parent.mkdir(parents=True, exist_ok=True)
        self._con: duckdb.DuckDBPyConnection | None = self._open()
        self.on_open: Callable[[], None] | None = None    # told when release() was undone by a use (the daemon)
        self.reopened = 0                                 # connections opened again after release()
        # The writer's copy of the `state` table's values it read or wrote (get_state): the daemon's loop and
        # /healthz ask for them on every wake and probe, which must not open a released connection.
        self._state: dict[str, str | None] = {}
        self._pending: list[tuple[str, list[Any]]] = []
        self._inventory: dict[str, dict[str, InventoryItem]] | None = None   # by reconciler, id: see inventory()
        self._in_txn = False
        self._batch: list[tuple[str, list[Any]]] | None = None
        self._journal: Journal | None = None
        if str(path) != ":memory:" and not read_only:
            journal_path = path.with_name(path.name + ".journal")
            self._apply_batch(Journal.read(journal_path))
            self._journal = Journal(journal_path)
            self._journal.reset()

    def _open(self, *, rebuild: bool = True) -> duckdb.DuckDBPyConnection:
        if self.read_only and str(self.path) != ":memory:" and not self.path.exists():
            # Nothing recorded yet: a reader sees an empty index and creates no file (a daemon may be about to).
            empty = duckdb.connect(":memory:")
            ensure_schema(empty, "core", CORE_MIGRATIONS)
            return empty
        con: duckdb.DuckDBPyConnection | None = None
        try:
            con = duckdb.connect(str(self.path), read_only=self.read_only)
            if not self.read_only:
                # DuckDB's allocator (jemalloc) returns freed pages to the system only when it is called again
                # or from its own background thread: without the thread, an idle daemon kept ~10 MB of pages
                # its last run freed (bench/idle.py). One process-wide setting; the thread sleeps between purges.
                con.execute("SET allocator_background_threads = true")
                ensure_schema(con, "core", CORE_MIGRATIONS)
            # Ask DuckDB to read what every start reads anyway: a file cut short (a full disk, a bad copy)
            # fails here with DuckDB's own "could not read enough bytes", not at some later write.
            con.execute("SELECT max(length(key || value)) FROM state").fetchall()
            con.execute("SELECT max(length(id || status)), max(started) FROM runs").fetchall()
            return con
        except duckdb.Error as err:
            if con is not None:
                con.close()
            if _is_lock_error(err):
                holder = lock_holder(err)
                raise LockError(f"the index {self.path} is held by another process"
                                + (f" ({holder})" if holder else ""),
                                hint="a daemon or another stratum command is using it: wait for it, or use "
                                     "the CLI against the running daemon") from err
            if is_io_error(err) or not is_corrupt(err):
                # A full disk, a read-only mount, a permission: the file is fine, the host is not. Never
                # moved aside.
                raise IndexError_(f"cannot open the index {self.path}: {err}",
                                  hint="check the data directory's disk space, mount and permissions; the "
                                       "index is left as it is") from err
            if self.read_only:
                raise IndexError_(f"cannot read the index {self.path}: {err}",
                                  hint="start the daemon, which rebuilds it from git (the file is kept)") from err
            if not rebuild:
                # Opened again after release(): the file changed under a running daemon. Rebuilding here would
                # drop what this process holds for it; a restart rebuilds it from git with everything reset.
                raise IndexError_(f"the index {self.path} became unreadable while the daemon held it: {err}",
                                  hint="restart the daemon: it keeps the file aside and rebuilds the index "
                                       "from git") from err
            return self._rebuild(err)

    def _rebuild(self, err: duckdb.Error) -> duckdb.DuckDBPyConnection:
        """DuckDB says the file is no database it can read: keep it beside for inspection, start a new one,
        and say so (stderr and an event), since every run recorded in it is now out of view."""
        aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
        self.path.rename(aside)
        wal = self.path.with_name(self.path.name + ".wal")
        if wal.exists():
            wal.rename(aside.with_name(aside.name + ".wal"))
        self.rebuilt_reason = (f"the index {self.path} is not a database DuckDB can read ({err}); "
                               f"kept as {aside}, a new index is rebuilt from git")
        print(f"stratum: warning: {self.rebuilt_reason}", file=sys.stderr, flush=True)
        con = duckdb.connect(str(self.path))
        ensure_schema(con, "core", CORE_MIGRATIONS)
        con.execute("INSERT INTO events VALUES (?, 'index_rebuilt', '', ?, ?, '')",
                    [time.time(), str(aside), self.rebuilt_reason[:4000]])
        return con

    @property
    def con(self) -> duckdb.DuckDBPyConnection:
        """The connection, opened again on first use after release()."""
        with self._lock:
            if self._con is None:
                self._con = self._open_again()
            return self._con

    @property
    def is_open(self) -> bool:
        """Whether a DuckDB connection is held now (False after release() until the next use)."""
        return self._con is not None

    def _open_again(self) -> duckdb.DuckDBPyConnection:
        """Open the file after release(): the daemon still holds apply.lock, so no Stratum process opened it
        meanwhile; a foreign one (a backup script) may, and is waited out for a while, as at start."""
        deadline = time.monotonic() + REOPEN_WAIT_S
        while True:
            try:
                con = self._open(rebuild=False)
                break
            except LockError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.1)
        self.reopened += 1
        if self.on_open is not None:
            self.on_open()
        return con

    def release(self) -> bool:
        """Close the connection while nothing uses it (an idle daemon): DuckDB's buffers, catalog and threads
        go (~12 MB resident of a daemon with 1,000 resources applied); the next use opens the file again
        (tens of ms). The journal is flushed first. False, keeping the connection, inside a transaction or a
        batch, or when another thread holds the index."""
        if not self._lock.acquire(blocking=False):
            return False
        try:
            if self._con is None or self._in_txn or self._batch is not None or self.path == Path(":memory:"):
                return False
            self.flush()
            self._con.close()
            self._con = None
            return True
        finally:
            self._lock.release()

    def reopen(self) -> None:
        """Open the file again on a new connection (DuckDB invalidates one after a fatal write error)."""
        with self._lock:
            if self._con is not None:
                with contextlib.suppress(Exception):
                    self._con.close()
            self._inventory = None
            self._state.clear()
            self._con = self._open()

    def close(self) -> None:
        """Flush the journal and close the connection (checkpointing the WAL)."""
        with self._lock:
            self.flush()
            if self._journal is not None:
                self._journal.close()
                self._journal = None
            if self._con is not None:
                self._con.close()
                self._con = None

    # -- the journal -------------------------------------------------------------------------------
    def _apply_batch(self, records: Sequence[tuple[str, list[Any]]]) -> None:
        """Write journal records in one transaction, one set-based statement per run of the same operation
        (a row-by-row INSERT OR REPLACE costs milliseconds each in DuckDB)."""
        if not records:
            return
        own = not self._in_txn
        if own:
            self.con.execute("BEGIN TRANSACTION")
        try:
            # Checkpoints and inventory live in different tables: order only matters within each, so the
            # (interleaved) records become one statement for the checkpoints and a few for the inventory.
            checkpoints = [params for op, params in records if op == "checkpoint"]
            inventory = [(op, params) for op, params in records if op != "checkpoint"]
            groups = ([("checkpoint", checkpoints)] if checkpoints else []) + _runs_of(inventory)
            for op, rows in groups:
                if op == "drop_inventory":
                    keys = [f"{r[0]}\x00{r[1]}" for r in rows]
                    self.con.execute("DELETE FROM inventory WHERE reconciler || chr(0) || resource_id "
                                     "IN (SELECT unnest(?))", [keys])
                    continue
                table, width = _BULK[op]
                latest = {(r[0], r[1]): r for r in rows}       # the last record of a key wins
                columns = [list(col) for col in zip(*latest.values(), strict=True)]
                assert len(columns) == width
                self.con.execute(f"INSERT OR REPLACE INTO {table} SELECT "
                                 + ", ".join("unnest(?)" for _ in range(width)), columns)
            if own:
                self.con.execute("COMMIT")
        except Exception:
            self._inventory = None                # what reached the file is unknown: read it again
            if own:
                self.con.execute("ROLLBACK")
            raise

    @contextlib.contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """Group writes into one DuckDB commit (each commit syncs the WAL: milliseconds). Re-entrant; yields the
        connection for bulk statements inside the block."""
        with self._lock:
            if self._in_txn:
                yield self.con
                return
            self.flush()
            self.con.execute("BEGIN TRANSACTION")
            self._in_txn = True
            try:
                yield self.con
                self.flush()
                self.con.execute("COMMIT")
                if self._journal is not None:
                    self._journal.reset()
            except BaseException:
                self._inventory = None            # writes of the block are undone: read the file again
                self._state.clear()
                self.con.execute("ROLLBACK")
                raise
            finally:
                self._in_txn = False

    @contextlib.contextmanager
    def connection(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """The connection under the index's lock, deferred writes flushed (a reconciler's bulk reads; the Tables
        port)."""
        with self._lock:
            self.flush()
            yield self.con

    def migrate(self, component: str, migrations: Sequence[str]) -> int:
        """Apply `component`'s pending migrations under the lock (the Tables port); the version reached."""
        with self._lock:
            self.flush()
            return ensure_schema(self.con, component, migrations)

    def _defer(self, op: str, params: list[Any]) -> None:
        with self._lock:
            if self._journal is None:
                self.con.execute(_JOURNALED[op], params)
                return
            if self._batch is not None:
                self._batch.append((op, params))
                return
            self._journal.append(op, params)
            self._pending.append((op, params))
            if len(self._pending) >= _BATCH:
                self.flush()

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Journal the checkpoints of the block with one write when it ends (they are durable against a
        killed process from then on). For the executor: the actions that finished together."""
        with self._lock:
            if self._batch is not None or self._journal is None:
                yield
                return
            self._batch = []
            try:
                yield
            finally:
                records, self._batch = self._batch, None
                try:
                    self._journal.append_many(records)
                except BaseException:
                    self._inventory = None        # the block's inventory writes were not kept
                    raise
                self._pending.extend(records)
                if len(self._pending) >= _BATCH:
                    self.flush()

    def flush(self) -> None:
        """Move journaled records into DuckDB (one transaction), then empty the journal."""
        with self._lock:
            if not self._pending:
                return
            self._apply_batch(self._pending)
            self._pending.clear()
            if self._journal is not None and not self._in_txn:
                self._journal.reset()

    def sync(self) -> None:
        """Flush, and make the journal durable against power loss (the end of a run)."""
        with self._lock:
            self.flush()
            if self._journal is not None:
                self._journal.sync()

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a read query; rows as tuples."""
        with self._lock:
            self.flush()
            return self.con.execute(sql, list(params)).fetchall()

    def query_dicts(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Run a read query; rows as dicts."""
        with self._lock:
            self.flush()
            cur = self.con.execute(sql, list(params))
            names = [d[0] for d in cur.description or []]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        """Run one write statement (autocommitted)."""
        with self._lock:
            self.flush()
            lowered = sql.lower()
            if "inventory" in lowered:
                self._inventory = None
            if "state" in lowered:
                self._state.clear()               # a write to the table by SQL (a plugin's Tables port)
            self.con.execute(sql, list(params))

    # -- state ---------------------------------------------------------------------------------------
    def get_state(self, key: str) -> str | None:
        """A value from the key/value state table (the writer answers from its copy once read)."""
        with self._lock:
            if not self.read_only and key in self._state:
                return self._state[key]
            rows = self.query("SELECT value FROM state WHERE key = ?", [key])
            value = str(rows[0][0]) if rows else None
            if not self.read_only:
                self._state[key] = value
            return value

    def set_state(self, key: str, value: str | None) -> None:
        """Set (or with None, delete) a state value."""
        with self._lock:
            if value is None:
                self.execute("DELETE FROM state WHERE key = ?", [key])
            else:
                self.execute("INSERT OR REPLACE INTO state VALUES (?, ?)", [key, value])
            self._state[key] = value

    # -- revisions -----------------------------------------------------------------------------------
    def record_commits(self, commits: Iterable[Any]) -> int:
        """Record commits as seen (CommitInfo objects); returns how many were new."""
        new = 0
        now = time.time()
        with self._lock:
            for c in commits:
                exists = self.con.execute("SELECT 1 FROM revisions WHERE id = ?", [c.id]).fetchone()
                if exists:
                    continue
                self.con.execute(
                    "INSERT INTO revisions (id, parents, author, email, committed_at, message, seen_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [c.id, ",".join(c.parents), c.author, c.email, float(c.time), c.message[:4000], now])
                new += 1
        return new

    def set_revision_status(self, revision: str, status: str, run_id: str | None = None) -> None:
        """Mark a revision applied, rejected or skipped (coalesced into a newer run)."""
        self.execute("UPDATE revisions SET status = ?, run_id = coalesce(?, run_id) WHERE id = ?",
                     [status, run_id, revision])

    def record_changed_files(self, revision: str, changes: Sequence[tuple[str, str, str]]) -> None:
        """(path, blob id, change) rows for what a revision changed against the last one indexed."""
        if not changes:
            return
        paths, blobs, kinds = zip(*changes, strict=True)
        self.execute("INSERT INTO changed_files SELECT ?, unnest(?), unnest(?), unnest(?)",
                     [revision, list(paths), list(blobs), list(kinds)])

    def record_resources(self, revision: str, rows: Sequence[tuple[str, str, str, str, str]]) -> None:
        """Index the desired resources of a revision: (reconciler, id, kind, path, spec hash)."""
        with self._lock:
            self.con.execute("DELETE FROM resources WHERE revision = ?", [revision])
            if rows:
                cols = list(zip(*rows, strict=True))
                self.con.execute(
                    "INSERT INTO resources SELECT ?, unnest(?), unnest(?), unnest(?), unnest(?), unnest(?)",
                    [revision, *[list(c) for c in cols]])

    def patch_resources(self, revision: str, base: str, base_count: int, gone: Sequence[ResourceRow],
                        added: Sequence[ResourceRow]) -> bool:
        """Record `revision`'s resources as `base`'s, less `gone`, plus `added`, copied inside DuckDB (see
        daemon/run/carry.py). False, with nothing written, when `base` does not hold `base_count` rows."""
        with self._lock:
            self.flush()
            found = self.con.execute("SELECT count(*) FROM resources WHERE revision = ?", [base]).fetchone()
            if found is None or int(found[0]) != base_count:
                return False
            self.con.execute("DELETE FROM resources WHERE revision = ?", [revision])
            self.con.execute("INSERT INTO resources SELECT ?, reconciler, resource_id, kind, path, spec_hash "
                             "FROM resources WHERE revision = ?", [revision, base])
            if gone:
                keys = ["\x00".join(row) for row in gone]
                self.con.execute(
                    "DELETE FROM resources WHERE revision = ? AND concat_ws(chr(0), reconciler, resource_id, kind, "
                    "path, spec_hash) IN (SELECT unnest(?))", [revision, keys])
            if added:
                cols = [list(c) for c in zip(*added, strict=True)]
                self.con.execute(
                    "INSERT INTO resources SELECT ?, unnest(?), unnest(?), unnest(?), unnest(?), unnest(?)",
                    [revision, *cols])
            return True

    # -- runs and checkpoints -----------------------------------------------------------------------
    def start_run(self, revision: str, trigger: str, base_revision: str | None) -> str:
        """Open a run record in state `running`; returns its id."""
        run_id = uuid.uuid4().hex[:16]
        self.execute("INSERT INTO runs (id, revision, trigger, status, started, base_revision) "
                     "VALUES (?, ?, ?, 'running', ?, ?)", [run_id, revision, trigger, time.time(), base_revision])
        return run_id

    def set_run_plan(self, run_id: str, actions: Sequence[Action]) -> None:
        """Store the plan of a run (so a restart knows what was intended)."""
        plan = json.dumps([_action_dict(a) for a in actions])
        self.execute("UPDATE runs SET plan = ? WHERE id = ?", [plan, run_id])

    def finish_run(self, run_id: str, status: str, message: str = "",
                   problems: Sequence[Problem] = ()) -> float:
        """Finalize a run; returns its duration in ms."""
        now = time.time()
        with self._lock:
            self.flush()
            row = self.con.execute("SELECT started FROM runs WHERE id = ?", [run_id]).fetchone()
            started = float(row[0]) if row else now
            duration = (now - started) * 1000.0
            self.con.execute(
                "UPDATE runs SET status = ?, finished = ?, duration_ms = ?, message = ?, problems = ? WHERE id = ?",
                [status, now, duration, message[:8000], json.dumps([p.as_dict() for p in problems]), run_id])
        return duration

    def checkpoint(self, run_id: str, seq: int, action: Action, status: str, started: float,
                   message: str = "") -> None:
        """Record one action's outcome; written before any dependent action starts."""
        self._defer("checkpoint",
                    [run_id, seq, action.id, action.reconciler, action.kind, action.target, action.summary,
                     status, started, time.time(), message[:4000], json.dumps(_action_dict(action))])

    def run_actions(self, run_id: str) -> list[tuple[Action, str]]:
        """The checkpointed actions of a run in completion order, with their status."""
        rows = self.query("SELECT action, status FROM actions WHERE run_id = ? ORDER BY seq", [run_id])
        return [(action_from_dict(json.loads(r[0])), str(r[1])) for r in rows]

    def interrupted_runs(self) -> list[dict[str, Any]]:
        """Runs left in state `running` by a daemon that died."""
        return self.query_dicts("SELECT * FROM runs WHERE status = 'running' ORDER BY started")

    # -- inventory ------------------------------------------------------------------------------------
    def inventory(self, reconciler: str | None = None) -> list[InventoryItem]:
        """What Stratum owns on its targets."""
        sql = "SELECT reconciler, resource_id, kind, data FROM inventory"
        with self._lock:
            if self.read_only:                    # another process writes: always read the file
                rows = self.query(sql + " WHERE reconciler = ?", [reconciler]) if reconciler else self.query(sql)
                return [InventoryItem(str(r[0]), str(r[1]), str(r[2]), str(r[3])) for r in rows]
            # The only writer keeps a copy, updated by its own writes (a run reads 20,000 items twice).
            cached = self._cached_inventory()
            if reconciler:
                return list(cached.get(reconciler, {}).values())
            return [i for group in cached.values() for i in group.values()]

    def _cached_inventory(self) -> dict[str, dict[str, InventoryItem]]:
        if self._inventory is None:
            inventory: dict[str, dict[str, InventoryItem]] = {}
            for r in self.query("SELECT reconciler, resource_id, kind, data FROM inventory"):
                item = InventoryItem(str(r[0]), str(r[1]), str(r[2]), str(r[3]))
                inventory.setdefault(item.reconciler, {})[item.resource_id] = item
            self._inventory = inventory
        return self._inventory

    def inventory_map(self, reconciler: str) -> dict[str, InventoryItem]:
        """One reconciler's inventory by resource id (a copy: the caller may keep it)."""
        with self._lock:
            if self.read_only:
                return {i.resource_id: i for i in self.inventory(reconciler)}
            return dict(self._cached_inventory().get(reconciler, {}))

    def adopt_inventory(self, item: InventoryItem) -> None:
        """Hold `item` in the cached inventory in place of an equal entry (nothing is written): the caller's
        objects are then compared by identity on the next run (pipeline `_commit_good`)."""
        with self._lock:
            group = self._inventory.get(item.reconciler) if self._inventory is not None else None
            if group is not None and group.get(item.resource_id) == item:
                group[item.resource_id] = item

    def put_inventory(self, item: InventoryItem, revision: str) -> None:
        """Add or update an owned resource."""
        with self._lock:
            self._defer("put_inventory",
                        [item.reconciler, item.resource_id, item.kind, item.data, revision, time.time()])
            if self._inventory is not None:
                self._inventory.setdefault(item.reconciler, {})[item.resource_id] = item

    def drop_inventory(self, reconciler: str, resource_id: str) -> None:
        """Forget an owned resource (it was removed)."""
        with self._lock:
            self._defer("drop_inventory", [reconciler, resource_id])
            if self._inventory is not None:
                self._inventory.get(reconciler, {}).pop(resource_id, None)

    # -- events ----------------------------------------------------------------------------------------
    def event(self, kind: str, message: str, *, reconciler: str = "", subject: str = "",
              revision: str = "") -> None:
        """Record an event (drift found, history rewritten, branch deleted, ...)."""
        self.execute("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?)",
                     [time.time(), kind, reconciler, subject, message[:4000], revision])


def _action_dict(a: Action) -> dict[str, Any]:
    # The change payload itself (a file's whole content, say) is not recorded: recovery needs the action's
    # identity and compensation only, and the revision holds the rest.
    return {"id": a.id, "reconciler": a.reconciler, "kind": a.kind, "target": a.target, "summary": a.summary,
            "change": "{}", "depends_on": list(a.depends_on), "compensation": a.compensation}


def action_from_dict(d: dict[str, Any]) -> Action:
    """Rebuild an Action from its stored form."""
    return Action(id=d["id"], reconciler=d["reconciler"], kind=d["kind"], target=d["target"],
                  summary=d["summary"], change=d["change"], depends_on=tuple(d["depends_on"]),
                  compensation=d.get("compensation"))
