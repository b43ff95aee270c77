"""Database connections and roles declared in the repo: `vault/database/<mount>.ncl`, checked by
`(import "vault.ncl").DatabaseMount`.

    { connections = { main = { connection_url = "postgresql://{{username}}:{{password}}@db:5432/app",
                               username = "vault_admin", password_secret = "kv/db/main#password",
                               allowed_roles = ["app"] } },
      roles = { app = { db_name = "main", creation_statements = ["CREATE ROLE ..."], default_ttl = "1h" } },
      static_roles = { reports = { db_name = "main", username = "reports", rotation_period = "24h" } } }

The root password is never in the repo: `password_secret` is a secret reference resolved through the
secrets port at apply time, and only when the connection is new or the reference changed: after
`rotate-root` the vault alone knows the password, and a later commit does not put the old one back.
`plan` is pure (names and actions, no values); `apply` goes through the engine's own handler.
A connection removed from the repo is deleted only when no lease uses it (its leases still need it to be
revoked); otherwise the plan reports it as in use.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from reconcilers.base import Problem
from reconcilers.vault.database import config, leases, roles
from reconcilers.vault.database.errors import DatabaseError, DatabaseUnreachable
from reconcilers.vault.declared import load_files
from reconcilers.vault.pki.storage import KeyValueStore, get_json, put_json

if TYPE_CHECKING:
    from reconcilers.ports import Evaluator, Snapshot

PREFIX = "vault/database/"
CONTRACT = '(import "vault.ncl").DatabaseMount'
MARK = "declared/config/"                  # per connection: the password_secret reference last applied
_LITERAL_PASSWORD = re.compile(r"://[^:/@]+:(?!\{\{password\}\}@)[^@]+@")
_CONNECTION_FIELDS = ("connection_url", "username", "allowed_roles", "verify_connection", "max_open_connections")

Resolve = Callable[[str], str]             # a secret reference -> its value (the secrets port, at apply time)


@dataclass(frozen=True, slots=True)
class MountSpec:
    """One declared database mount."""

    name: str
    source: str
    connections: Mapping[str, Mapping[str, Any]]
    roles: Mapping[str, Mapping[str, Any]]
    static_roles: Mapping[str, Mapping[str, Any]]


@dataclass(frozen=True, slots=True)
class Change:
    """One planned change, as `stratum plan` shows it (never a value)."""

    mount: str
    action: str       # write-connection | delete-connection | connection-in-use | write-role | delete-role |
    target: str       # write-static-role | delete-static-role
    source: str = ""

    def __str__(self) -> str:
        return f"{self.action} {self.mount}/{self.target}" + (f" ({self.source})" if self.source else "")


def from_value(name: str, source: str, value: Mapping[str, Any]) -> MountSpec:
    """A spec from a contract-checked value, with the checks the contract cannot make (located errors)."""
    connections = {str(k): _with_reference(dict(v)) for k, v in dict(value.get("connections", {})).items()}
    dynamic = {str(k): dict(v) for k, v in dict(value.get("roles", {})).items()}
    static = {str(k): dict(v) for k, v in dict(value.get("static_roles", {})).items()}
    for conn_name, conn in connections.items():
        url = str(conn["connection_url"])
        where = f"{source}: connections.{conn_name}"
        if _LITERAL_PASSWORD.search(url):
            raise DatabaseError("connection_url holds a password in clear", where=where,
                                hint="write {{password}} there and name the secret in password_secret")
        if not config.USERNAME.match(str(conn["username"])):
            raise DatabaseError(f"username {conn['username']!r} is not a plain role name", where=where,
                                hint="letters, digits and _ . @ -")
        if "password_secret" in conn and "{{password}}" not in url:
            raise DatabaseError("password_secret is given but connection_url has no {{password}}", where=where)
    for role_name, body in dynamic.items():
        where = f"{source}: roles.{role_name}"
        _check_db(body["db_name"], role_name, connections, where)
        try:
            roles.dynamic_from_body(role_name, body)
        except DatabaseError as err:
            raise DatabaseError(err.what, where=where, hint=err.hint) from None
    for role_name, body in static.items():
        where = f"{source}: static_roles.{role_name}"
        _check_db(body["db_name"], role_name, connections, where)
        try:
            roles.static_from_body(role_name, body)
        except DatabaseError as err:
            raise DatabaseError(err.what, where=where, hint=err.hint) from None
    return MountSpec(name, source, connections, dynamic, static)


def _with_reference(conn: dict[str, Any]) -> dict[str, Any]:
    """A `password_secret` record { secret, key } as the secrets port's text form "kv/...#key"."""
    ref = conn.get("password_secret")
    if isinstance(ref, Mapping):
        conn["password_secret"] = f"{ref.get('secret', '')}#{ref.get('key', '')}"
    return conn


def _check_db(db_name: str, role: str, connections: Mapping[str, Mapping[str, Any]], where: str) -> None:
    conn = connections.get(db_name)
    if conn is None:
        raise DatabaseError(f"db_name {db_name!r} is not a connection declared in this file", where=where)
    allowed = conn.get("allowed_roles", [])
    if "*" not in allowed and role not in allowed:
        raise DatabaseError(f"connection {db_name} does not allow role {role}", where=where,
                            hint=f"add {role!r} to connections.{db_name}.allowed_roles")


def _build(name: str, source: str, value: Mapping[str, Any]) -> MountSpec:
    config.check_name(name, "database mount")
    return from_value(name, source, value)


def load(evaluator: Evaluator | None, snap: Snapshot) -> tuple[dict[str, MountSpec], list[Problem]]:
    """Every `vault/database/*.ncl` of the revision, evaluated under the contract (reconcilers/vault/declared.py);
    problems are located."""
    return load_files(evaluator, snap, PREFIX, CONTRACT, _build, "database mount")


def _stored_connection(store: KeyValueStore, name: str) -> dict[str, Any] | None:
    data = get_json(store, "config/" + name)
    return {k: data.get(k) for k in _CONNECTION_FIELDS} if data else None


def _wanted_connection(conn: Mapping[str, Any]) -> dict[str, Any]:
    return {"connection_url": conn["connection_url"], "username": conn["username"],
            "allowed_roles": list(conn.get("allowed_roles", [])),
            "verify_connection": bool(conn.get("verify_connection", True)),
            "max_open_connections": int(conn.get("max_open_connections", 4))}


def plan(spec: MountSpec, store: KeyValueStore) -> list[Change]:
    """What `apply` would change on the mount (reads the store, writes nothing)."""
    changes: list[Change] = []
    for name, conn in sorted(spec.connections.items()):
        mark = get_json(store, MARK + name) or {}
        if (_stored_connection(store, name) != _wanted_connection(conn)
                or mark.get("password_secret") != conn.get("password_secret")):
            changes.append(Change(spec.name, "write-connection", name, spec.source))
    for name, body in sorted(spec.roles.items()):
        if get_json(store, "roles/" + name) != roles.dynamic_from_body(name, body).to_json():
            changes.append(Change(spec.name, "write-role", name, spec.source))
    for name, body in sorted(spec.static_roles.items()):
        if get_json(store, "static-roles/" + name) != roles.static_from_body(name, body).to_json():
            changes.append(Change(spec.name, "write-static-role", name, spec.source))
    for name in store.list("roles/"):
        if name not in spec.roles:
            changes.append(Change(spec.name, "delete-role", name, spec.source))
    for name in store.list("static-roles/"):
        if name not in spec.static_roles:
            changes.append(Change(spec.name, "delete-static-role", name, spec.source))
    in_use = {lease.db_name for lease in leases.all_leases(store)}
    for name in store.list("config/"):
        if name not in spec.connections:
            action = "connection-in-use" if name in in_use else "delete-connection"
            changes.append(Change(spec.name, action, name, spec.source))
    return changes


def _call(store: KeyValueStore, method: str, path: str, body: Mapping[str, Any], mount: str, where: str) -> None:
    from reconcilers.vault.database import api  # the engine only when a change is applied (validate: never)

    status, reply = api.handle(method, path, body, store, mount=mount)
    if status >= 300:
        # 502: PostgreSQL could not be reached (worth retrying); anything else: the declaration is wrong.
        kind = DatabaseUnreachable if status == DatabaseUnreachable.status else DatabaseError
        raise kind(f"{method} {path}: {'; '.join(reply.get('errors', []))}", where=where)


def apply(spec: MountSpec, store: KeyValueStore, changes: Sequence[Change], resolve: Resolve) -> list[str]:
    """Carry out planned changes (connections, then roles, then deletions); returns what was done."""
    order = ["write-connection", "write-role", "write-static-role", "delete-role", "delete-static-role",
             "delete-connection"]
    done: list[str] = []
    for change in sorted((c for c in changes if c.action in order), key=lambda c: order.index(c.action)):
        name = change.target
        if change.action == "write-connection":
            conn = spec.connections[name]
            body: dict[str, Any] = {"plugin_name": "postgresql-database-plugin", **_wanted_connection(conn)}
            mark = get_json(store, MARK + name) or {}
            reference = conn.get("password_secret")
            if reference and (store.get("config/" + name) is None or mark.get("password_secret") != reference):
                body["password"] = resolve(str(reference))
            _call(store, "POST", "config/" + name, body, spec.name, spec.source)
            put_json(store, MARK + name, {"password_secret": reference})
        elif change.action == "write-role":
            # The whole role (defaults filled in), not a patch: a field removed from the repo is reset.
            full = roles.dynamic_from_body(name, spec.roles[name]).to_json()
            _call(store, "POST", "roles/" + name, full, spec.name, spec.source)
        elif change.action == "write-static-role":
            full = roles.static_from_body(name, spec.static_roles[name]).to_json()
            _call(store, "POST", "static-roles/" + name, full, spec.name, spec.source)
        elif change.action == "delete-role":
            _call(store, "DELETE", "roles/" + name, {}, spec.name, spec.source)
        elif change.action == "delete-static-role":
            _call(store, "DELETE", "static-roles/" + name, {}, spec.name, spec.source)
        elif change.action == "delete-connection":
            _call(store, "DELETE", "config/" + name, {}, spec.name, spec.source)
            store.delete(MARK + name)
        done.append(str(change))
    return done
