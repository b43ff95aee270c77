"""The database engine's request handlers.

    handle(method, path, body, store, *, mount="database", now=None) -> (status, body)
        Vault's paths under the mount: config/<name>, roles/<r>, creds/<r>, static-roles/<r>, static-creds/<r>,
        rotate-role/<r>, rotate-root/<name> (and LIST config, roles, static-roles). `mount` is where the service
        mounted the engine: lease ids read "<mount>/creds/<role>/<id>".
    sys_leases(method, path, body, store, *, mount="database", now=None, max_connections=4) -> (status, body)
        `path` relative to sys/leases/: lookup (PUT {lease_id}; LIST lookup/<prefix>), renew, revoke
        (or revoke/<lease_id>), revoke-prefix/<prefix>, tidy. The service routes a lease id to the engine whose
        mount prefixes it.
    reaper.reap(store, now, max_connections) and creds.rotate_due(store, now): for the service's scheduler.

Answers are Vault's JSON: {"data": {...}} (creds also carry lease_id, lease_duration, renewable at the top),
or {"errors": [...]} with 400/404 (bad request, unknown), 502 (PostgreSQL unreachable: nothing was created).
A revocation that cannot reach PostgreSQL answers 202 with the lease kept as pending and retried.
Authorization and audit are the service's, in front of this.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from collections.abc import Callable, Mapping
from typing import Any

from reconcilers.vault.database import config, creds, leases, reaper, roles, sql
from reconcilers.vault.database.errors import DatabaseError, DatabaseNotFound
from reconcilers.vault.pki.storage import KeyValueStore

Reply = tuple[int, dict[str, Any]]


def _seconds(now: dt.datetime | None) -> int:
    return int(now.timestamp()) if now is not None else int(time.time())


def _errors(run: Callable[[], Reply]) -> Reply:
    try:
        return run()
    except DatabaseError as err:
        return err.status, {"errors": [err.render()]}
    except (ValueError, TypeError) as err:
        return 400, {"errors": [f"malformed request ({err})"]}


def handle(method: str, path: str, body: Mapping[str, Any], store: KeyValueStore, *, mount: str = "database",
           now: dt.datetime | None = None) -> Reply:
    """Serve one request under the mount (see the module's docstring)."""
    parts = [p for p in path.strip("/").split("/") if p]
    return _errors(lambda: _route(method.upper(), parts, body, store, mount, _seconds(now)))


def _list(store: KeyValueStore, prefix: str) -> Reply:
    keys = store.list(prefix)
    if not keys:
        raise DatabaseNotFound(f"nothing under {prefix.rstrip('/')}")
    return 200, {"data": {"keys": keys}}


def _route(method: str, parts: list[str], body: Mapping[str, Any], store: KeyValueStore, mount: str,
           now: int) -> Reply:
    write = method in ("POST", "PUT")
    head = parts[0] if parts else ""
    name = parts[1] if len(parts) == 2 else ""
    if len(parts) == 1 and method == "LIST" and head in ("config", "roles", "static-roles"):
        return _list(store, head + "/")
    if not name:
        raise DatabaseNotFound(f"unsupported path {'/'.join(parts)!r} on a database mount")
    if head == "config":
        if write:
            warnings = config.write(store, name, body)
            return (200, {"warnings": warnings}) if warnings else (204, {})
        if method == "GET":
            return 200, {"data": config.load(store, name).public()}
        if method == "DELETE":
            store.delete("config/" + config.check_name(name, "connection"))
            return 204, {}
    if head == "roles":
        if write:
            roles.write_dynamic(store, name, body)
            return 204, {}
        if method == "GET":
            data = roles.load_dynamic(store, name).to_json()
            data.pop("name")
            return 200, {"data": data}
        if method == "DELETE":
            store.delete("roles/" + config.check_name(name, "role"))
            return 204, {}
    if head == "creds" and method == "GET":
        return 200, creds.issue(store, name, now, mount)
    if head == "static-roles":
        if write:
            role = roles.write_static(store, name, body)
            if store.get("static-creds/" + role.name) is None:     # a new static role gets its password now
                creds.rotate_static(store, role, now)
            return 204, {}
        if method == "GET":
            data = roles.load_static(store, name).to_json()
            data.pop("name")
            return 200, {"data": data}
        if method == "DELETE":
            store.delete("static-roles/" + config.check_name(name, "static role"))
            store.delete("static-creds/" + name)
            return 204, {}
    if head == "static-creds" and method == "GET":
        return 200, {"data": creds.read_static(store, name, now)}
    if head == "rotate-role" and write:
        creds.rotate_static(store, roles.load_static(store, name), now)
        return 204, {}
    if head == "rotate-root" and write:
        config.rotate_root(store, name)
        return 204, {}
    raise DatabaseError(f"{method} is not supported on {'/'.join(parts)}")


# --- sys/leases -------------------------------------------------------------------------------------------


def sys_leases(method: str, path: str, body: Mapping[str, Any], store: KeyValueStore, *, mount: str = "database",
               now: dt.datetime | None = None, max_connections: int = 4) -> Reply:
    """Serve sys/leases/<path> for this engine's leases (see the module's docstring)."""
    parts = [p for p in path.strip("/").split("/") if p]
    return _errors(lambda: _leases(method.upper(), parts, body, store, mount, _seconds(now), max_connections))


def _leases(method: str, parts: list[str], body: Mapping[str, Any], store: KeyValueStore, mount: str, now: int,
            max_connections: int) -> Reply:
    head = parts[0] if parts else ""
    rest = "/".join(parts[1:])
    if head == "lookup" and method == "LIST":
        return _list_leases(store, rest, mount)
    if head == "lookup" and method in ("PUT", "POST"):
        return 200, {"data": leases.load(store, body.get("lease_id"), mount).describe(mount, now)}
    if head == "renew" and method in ("PUT", "POST"):
        return _renew(store, body.get("lease_id") or rest, body.get("increment"), mount, now)
    if head == "revoke" and method in ("PUT", "POST"):
        lease = leases.load(store, body.get("lease_id") or rest, mount)
        return _revoked(reaper.revoke_leases(store, [lease], now, 1), store, [lease], mount)
    if head == "revoke-prefix" and method in ("PUT", "POST"):
        prefix = rest.strip("/")
        if not (prefix == mount or prefix.startswith(mount + "/")):
            raise DatabaseNotFound(f"prefix {prefix!r} is not under the {mount} mount")
        chosen = [lease for lease in leases.all_leases(store) if lease.lease_id(mount).startswith(prefix)]
        return _revoked(reaper.revoke_leases(store, chosen, now, max_connections), store, chosen, mount)
    if head == "tidy" and method in ("PUT", "POST"):
        return 202, {"data": _tidy(store)}
    raise DatabaseNotFound(f"unsupported path sys/leases/{'/'.join(parts)}")


def _revoked(report: reaper.ReapReport, store: KeyValueStore, chosen: list[leases.Lease], mount: str) -> Reply:
    if not report.pending:
        return 204, {}
    waiting = [lease for lease in chosen if leases.load_key(store, lease.role, lease.id) is not None]
    return 202, {"data": {"revoked": report.revoked, "pending": [lease.lease_id(mount) for lease in waiting]},
                 "warnings": [f"{report.pending} lease(s) could not be revoked now and stay pending; they are "
                              "retried with backoff (see sys/leases/lookup for the error)"]}


def _list_leases(store: KeyValueStore, prefix: str, mount: str) -> Reply:
    parts = [p for p in prefix.strip("/").split("/") if p]
    if parts == [mount]:
        keys = ["creds/"] if store.list("leases/") else []
    elif parts == [mount, "creds"]:
        keys = store.list("leases/")
    elif len(parts) == 3 and parts[:2] == [mount, "creds"]:
        keys = store.list(f"leases/{parts[2]}/")
    else:
        keys = []
    if not keys:
        raise DatabaseNotFound(f"no leases under {prefix!r}")
    return 200, {"data": {"keys": keys}}


def _renew(store: KeyValueStore, lease_id: object, increment: object, mount: str, now: int) -> Reply:
    lease = leases.load(store, lease_id, mount)
    if lease.state != "active":
        raise DatabaseError(f"lease {lease.lease_id(mount)} is being revoked and cannot be renewed")
    role = roles.load_dynamic(store, lease.role)
    wanted = roles.duration(increment, "increment") if increment not in (None, "", 0) else role.default_ttl
    expire = min(now + wanted, lease.max_expire_time)
    conn = config.load(store, lease.db_name)
    with conn.connect() as live:
        sql.run_statements(live, role.renew_statements, role=role.name, kind="renew_statements",
                           name=lease.username, expiration=sql.expiration_text(dt.datetime.fromtimestamp(
                               expire, dt.UTC)))
    renewed = dataclasses.replace(lease, expire_time=expire, last_renewal=now)
    leases.save(store, renewed, lease)
    reply: dict[str, Any] = {"lease_id": lease.lease_id(mount), "lease_duration": expire - now, "renewable": True,
                             "data": None}
    if now + wanted > lease.max_expire_time:
        reply["warnings"] = [f"TTL of {wanted} s was capped by the role's max_ttl: {expire - now} s remain"]
    return 200, reply


def _tidy(store: KeyValueStore) -> dict[str, int]:
    """Drop expiry markers that point at nothing, and give every stored lease its marker back."""
    stray = restored = 0
    for child in store.list("expiry/"):
        bucket = child.rstrip("/") + "/"        # a backend may list folders with or without the slash
        for entry in store.list(f"expiry/{bucket}"):
            role, _, ident = entry.partition(".")
            lease = leases.load_key(store, role, ident)
            if lease is None or f"{lease.due // 60:012d}/" != bucket:
                store.delete(f"expiry/{bucket}{entry}")
                stray += 1
    for lease in leases.all_leases(store):
        marker = f"expiry/{lease.due // 60:012d}/{lease.role}.{lease.id}"
        if store.get(marker) is None:
            store.put(marker, b"")
            restored += 1
    return {"stray_markers_removed": stray, "markers_restored": restored}
