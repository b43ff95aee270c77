"""Revoking leases against PostgreSQL with bounded concurrency: the expiry reaper and the revoke calls.

`reap(store, now, max_connections)` is what the service's scheduler calls (every few seconds): it finds the
leases that are due (from storage, so it picks up where a stopped daemon left off), and revokes them with at
most `max_connections` connections open at once, each connection serving many leases in turn: 10,000 leases
expiring together open a handful of connections, not 10,000 (Vault's lease explosions: #3903, #6417, #9018).

Worker threads only talk to PostgreSQL; every storage write happens on the calling thread afterwards. A lease
whose revocation fails (database down, statement refused) stays stored as "revoking" with its error and a
backoff; the next sweep after that time tries again.
"""

from __future__ import annotations

import datetime as dt
import functools
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from reconcilers.vault.database import config, leases, roles, sql
from reconcilers.vault.database.errors import DatabaseError, DatabaseUnreachable
from reconcilers.vault.database.leases import Lease
from reconcilers.vault.pki.storage import KeyValueStore


@dataclass(frozen=True, slots=True)
class ReapReport:
    """What one sweep did."""

    due: int
    revoked: int
    pending: int
    max_open_connections: int
    seconds: float


class _Gauge:
    """Connections open right now, and the most at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.open = 0
        self.peak = 0

    def up(self) -> None:
        with self.lock:
            self.open += 1
            self.peak = max(self.peak, self.open)

    def down(self) -> None:
        with self.lock:
            self.open -= 1


def _revoke_batch(conn_def: config.Connection, batch: Sequence[tuple[Lease, tuple[str, ...]]],
                  gauge: _Gauge) -> list[tuple[Lease, str]]:
    """Revoke a batch over one connection; returns (lease, error) for each ("" = revoked)."""
    try:
        live = conn_def.connect()
    except DatabaseUnreachable as err:
        return [(lease, err.what) for lease, _ in batch]
    gauge.up()
    results: list[tuple[Lease, str]] = []
    try:
        for i, (lease, statements) in enumerate(batch):
            try:
                sql.run_statements(live, statements, role=lease.role, kind="revocation_statements",
                                   name=lease.username)
                results.append((lease, ""))
            except DatabaseUnreachable as err:   # the database went away: the rest wait for the next sweep
                results += [(lease_, err.what) for lease_, _ in batch[i:]]
                break
            except DatabaseError as err:
                results.append((lease, err.render()))
    finally:
        import psycopg  # loaded by the connection above: this import is a dictionary lookup

        try:
            live.close()
        except psycopg.Error:
            pass                                 # closing a connection the server already dropped
        gauge.down()
    return results


def revoke_leases(store: KeyValueStore, due: Sequence[Lease], now: int, max_connections: int) -> ReapReport:
    """Revoke the given leases (bounded connections); delete the revoked, mark the others pending."""
    start = time.perf_counter()
    gauge = _Gauge()
    by_db: dict[str, list[tuple[Lease, tuple[str, ...]]]] = defaultdict(list)
    outcomes: list[tuple[Lease, str]] = []
    for lease in due:
        try:
            statements = roles.load_dynamic(store, lease.role).revocation_statements
        except DatabaseError:
            statements = roles.DEFAULT_REVOCATION      # the role was deleted: its leases still get revoked
        by_db[lease.db_name].append((lease, statements))
    for db_name, items in by_db.items():
        try:
            conn_def = config.load(store, db_name)
        except DatabaseError as err:
            outcomes += [(lease, err.render()) for lease, _ in items]
            continue
        workers = max(1, min(max_connections, conn_def.max_open_connections, len(items)))
        batches = [items[i::workers] for i in range(workers)]
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lease-reaper") as pool:
            for result in pool.map(functools.partial(_revoke_batch, conn_def, gauge=gauge), batches):
                outcomes += result
    revoked = failed = 0
    for lease, error in outcomes:
        if leases.load_key(store, lease.role, lease.id) is None:
            # Revoked meanwhile by another call (a user's revoke during a sweep): never bring it back as pending.
            if not error:
                revoked += 1
            continue
        if error:
            leases.save(store, leases.pending(lease, now, error), lease)
            failed += 1
        else:
            leases.delete(store, lease)
            revoked += 1
    return ReapReport(len(due), revoked, failed, gauge.peak, time.perf_counter() - start)


def reap(store: KeyValueStore, now: dt.datetime | float | None = None, max_connections: int = 4) -> ReapReport:
    """Revoke every lease that is due (expired, or its retry time has come), with bounded connections."""
    moment = int(now.timestamp() if isinstance(now, dt.datetime) else (now if now is not None else time.time()))
    return revoke_leases(store, leases.due_leases(store, moment), moment, max_connections)
