"""Credentials: creds/<role> makes a database role and a lease; static-creds/<role> reads a rotated password;
rotate-role/<role> and `rotate_due` (for the scheduler) rotate static passwords.

creds/<role> stores the lease before creating the database role: if the daemon dies between the two, the
reaper still drops the role at expiry (DROP ROLE IF EXISTS), so no database user outlives the vault's record.
If creation fails (database down, a statement refused) the lease is deleted and nothing is left behind.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import secrets
import string
from dataclasses import dataclass
from typing import Any

from reconcilers.vault.database import config, leases, roles, sql
from reconcilers.vault.database.errors import DatabaseError
from reconcilers.vault.pki.storage import KeyValueStore, get_json, put_json

_SAFE = re.compile(r"[^a-z0-9_]")


def _username(role: str, now: int) -> str:
    """v-<role>-<random>-<time>: unique, recognisable, within PostgreSQL's 63 characters."""
    rand = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(12))
    return f"v-{_SAFE.sub('_', role.lower())[:30]}-{rand}-{now}"[:63]


def issue(store: KeyValueStore, role_name: str, now: int, mount: str) -> dict[str, Any]:
    """creds/<role>: a new database role with a password, and its lease (Vault's response shape)."""
    role = roles.load_dynamic(store, role_name)
    conn = config.load(store, role.db_name)
    if not conn.allows(role.name):
        raise DatabaseError(f"role {role.name}: database connection {conn.name} no longer allows it",
                            hint=f"add {role.name!r} to the connection's allowed_roles")
    username, password = _username(role.name, now), sql.new_password()
    ttl = role.default_ttl if not role.max_ttl else min(role.default_ttl, role.max_ttl)
    lease = leases.Lease(role=role.name, id=leases.new_id(), db_name=conn.name, username=username,
                         issue_time=now, expire_time=now + ttl,
                         max_expire_time=now + (role.max_ttl or ttl))
    leases.save(store, lease)
    try:
        with conn.connect() as live:
            sql.run_statements(live, role.creation_statements, role=role.name, kind="creation_statements",
                               name=username, password=password,
                               expiration=sql.expiration_text(_utc(lease.expire_time)))
    except DatabaseError:
        leases.delete(store, lease)             # nothing was created (one transaction): no lease either
        raise
    return {"lease_id": lease.lease_id(mount), "lease_duration": ttl, "renewable": True,
            "data": {"username": username, "password": password}}


def _utc(ts: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, dt.UTC)


@dataclass(frozen=True, slots=True)
class StaticPassword:
    """static-creds/<role> as stored: the current password and when it was set."""

    username: str
    password: str
    last_vault_rotation: int
    pending_password: str = ""


def rotate_static(store: KeyValueStore, role: roles.StaticRole, now: int) -> StaticPassword:
    """Set a new password for the static role's user (pending first, so a crash keeps the one that works)."""
    conn = config.load(store, role.db_name)
    key = "static-creds/" + role.name
    old = get_json(store, key)
    current = StaticPassword(**old) if old else StaticPassword(role.username, "", 0)
    new = sql.new_password()
    with conn.connect() as live:
        put_json(store, key, dataclasses.asdict(dataclasses.replace(current, pending_password=new)))
        try:
            sql.run_statements(live, role.rotation_statements, role=role.name, kind="rotation_statements",
                               name=role.username, password=new)
        except DatabaseError:
            put_json(store, key, dataclasses.asdict(current))
            raise
    done = StaticPassword(role.username, new, now)
    put_json(store, key, dataclasses.asdict(done))
    return done


def read_static(store: KeyValueStore, role_name: str, now: int) -> dict[str, Any]:
    """static-creds/<role>: the current password and how long until it rotates."""
    role = roles.load_static(store, role_name)
    data = get_json(store, "static-creds/" + role.name)
    if data is None or not data.get("password"):
        raise DatabaseError(f"static role {role.name}: no password has been set yet",
                            hint=f"rotate it: rotate-role/{role.name}")
    stored = StaticPassword(**data)
    return {"username": stored.username, "password": stored.password,
            "last_vault_rotation": stored.last_vault_rotation, "rotation_period": role.rotation_period,
            "ttl": max(0, stored.last_vault_rotation + role.rotation_period - now)}


def rotate_due(store: KeyValueStore, now: int) -> dict[str, str]:
    """Rotate every static role whose period has passed (the scheduler calls this); returns role -> outcome."""
    outcome: dict[str, str] = {}
    for name in store.list("static-roles/"):
        role = roles.load_static(store, name)
        data = get_json(store, "static-creds/" + name)
        last = int(data["last_vault_rotation"]) if data else 0
        if last + role.rotation_period > now:
            continue
        try:
            rotate_static(store, role, now)
            outcome[name] = "rotated"
        except DatabaseError as err:
            outcome[name] = err.render()       # retried on the next call; the old password still works
    return outcome
