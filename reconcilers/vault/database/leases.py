"""Leases of dynamic credentials, kept in the vault's storage so they outlive the daemon.

    leases/<role>/<id>               the lease (JSON): who, when it expires, and whether revocation is pending
    expiry/<minute>/<role>.<id>      an empty marker under the minute the lease is due (expiry, or next retry)

The reaper lists only the minute folders that are due instead of reading every lease. A lease id reads
`<mount>/creds/<role>/<id>` as in Vault. A lease whose revocation failed stays listed with state "revoking",
its error and its next attempt (capped exponential backoff): never silently dropped.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import random
import secrets
from dataclasses import dataclass
from typing import Any

from reconcilers.vault.database.errors import DatabaseError, DatabaseNotFound
from reconcilers.vault.pki.storage import KeyValueStore, get_json, put_json

BACKOFF_BASE = 5.0          # seconds before the first retry of a failed revocation
BACKOFF_CAP = 3600.0        # never wait longer than an hour between attempts


@dataclass(frozen=True, slots=True)
class Lease:
    """One lease on dynamic credentials."""

    role: str
    id: str
    db_name: str
    username: str
    issue_time: int
    expire_time: int
    max_expire_time: int
    last_renewal: int = 0
    state: str = "active"                 # active | revoking
    attempts: int = 0
    next_attempt: int = 0
    last_error: str = ""

    @property
    def key(self) -> str:
        return f"leases/{self.role}/{self.id}"

    @property
    def due(self) -> int:
        """When the reaper should act on it."""
        return self.next_attempt if self.state == "revoking" else self.expire_time

    def lease_id(self, mount: str) -> str:
        return f"{mount}/creds/{self.role}/{self.id}"

    def describe(self, mount: str, now: int) -> dict[str, Any]:
        """sys/leases/lookup's answer."""
        data: dict[str, Any] = {"id": self.lease_id(mount), "issue_time": _rfc3339(self.issue_time),
                                "expire_time": _rfc3339(self.expire_time),
                                "last_renewal": _rfc3339(self.last_renewal) if self.last_renewal else None,
                                "renewable": self.state == "active", "ttl": max(0, self.expire_time - now)}
        if self.state == "revoking":
            data |= {"revocation_pending": True, "revocation_attempts": self.attempts,
                     "next_attempt": _rfc3339(self.next_attempt), "last_error": self.last_error}
        return data


def _rfc3339(ts: int) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat().replace("+00:00", "Z")


def _marker(due: int, lease: Lease) -> str:
    return f"expiry/{due // 60:012d}/{lease.role}.{lease.id}"


def new_id() -> str:
    """A random lease id (letters and digits)."""
    return secrets.token_hex(12)


def save(store: KeyValueStore, lease: Lease, old: Lease | None = None) -> None:
    """Store the lease, then move its expiry marker (the marker may lead: the reaper tolerates a stray one)."""
    put_json(store, lease.key, dataclasses.asdict(lease))
    store.put(_marker(lease.due, lease), b"")
    if old is not None and _marker(old.due, old) != _marker(lease.due, lease):
        store.delete(_marker(old.due, old))


def delete(store: KeyValueStore, lease: Lease) -> None:
    """Forget a revoked lease and its marker."""
    store.delete(lease.key)
    store.delete(_marker(lease.due, lease))


def load_key(store: KeyValueStore, role: str, lease: str) -> Lease | None:
    """The lease stored for role and id, or None."""
    data = get_json(store, f"leases/{role}/{lease}")
    return Lease(**{k: v for k, v in data.items() if k in Lease.__dataclass_fields__}) if data else None


def parse_id(lease_id: object, mount: str) -> tuple[str, str]:
    """(role, id) from a full lease id of this mount; an error for anything else."""
    if not isinstance(lease_id, str) or not lease_id:
        raise DatabaseError("lease_id is required")
    parts = lease_id.strip("/").split("/")
    if len(parts) != 4 or parts[0] != mount or parts[1] != "creds" or not all(parts[2:]):
        raise DatabaseNotFound(f"lease {lease_id!r} is not a lease of the {mount} mount")
    return parts[2], parts[3]


def load(store: KeyValueStore, lease_id: object, mount: str) -> Lease:
    """The lease for a full lease id, or a not-found error (also for leases already revoked)."""
    role, ident = parse_id(lease_id, mount)
    lease = load_key(store, role, ident)
    if lease is None:
        raise DatabaseNotFound(f"lease {lease_id} does not exist (expired and revoked, or never issued)")
    return lease


def pending(lease: Lease, now: int, error: str) -> Lease:
    """The lease after a failed revocation: state revoking, one more attempt, the next after a backoff."""
    attempts = lease.attempts + 1
    delay = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** min(attempts - 1, 20))
    delay *= 1 + random.random() * 0.1          # jitter: leases that failed together do not retry in lockstep
    return dataclasses.replace(lease, state="revoking", attempts=attempts, next_attempt=now + int(delay),
                               last_error=error[:500])


def due_leases(store: KeyValueStore, now: int, limit: int = 100_000) -> list[Lease]:
    """Leases whose expiry or retry time has come, oldest minute first (bounded by `limit`)."""
    found: list[Lease] = []
    current = now // 60
    for bucket in sorted(store.list("expiry/")):
        minute = bucket.rstrip("/")
        if not minute.isdigit() or int(minute) > current:
            continue
        for entry in store.list(f"expiry/{minute}/"):
            role, _, ident = entry.partition(".")
            lease = load_key(store, role, ident)
            if lease is None or lease.due // 60 != int(minute):
                store.delete(f"expiry/{minute}/{entry}")      # stray marker (renewed or revoked meanwhile)
                continue
            if lease.due <= now:
                found.append(lease)
                if len(found) >= limit:
                    return found
    return found


def all_leases(store: KeyValueStore, role_prefix: str = "") -> list[Lease]:
    """Every stored lease, optionally of roles whose name starts with `role_prefix`."""
    out = []
    for role_dir in store.list("leases/"):
        role = role_dir.rstrip("/")
        if not role.startswith(role_prefix):
            continue
        for ident in store.list(f"leases/{role}/"):
            lease = load_key(store, role, ident)
            if lease is not None:
                out.append(lease)
    return out
