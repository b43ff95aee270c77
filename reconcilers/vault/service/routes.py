"""The authenticated sys/ endpoints and the token auth method (auth/token/...), as Vault answers them."""

from __future__ import annotations

from typing import Any

from reconcilers.vault.service.errors import BadRequest, NotFound, Unsupported
from reconcilers.vault.service.request import Answer, ApiRequest
from reconcilers.vault.service.roles import Roles
from reconcilers.vault.service.seal import FORMATS
from reconcilers.vault.service.tokens import TokenEntry

# `svc` below is the VaultService (core.py), typed loosely so that core -> routes stays a one-way import.
VaultService = Any


def open_sys(svc: VaultService, req: ApiRequest) -> Answer:
    """The endpoints every caller may use, sealed or not: seal-status, health, leader, init, unseal."""
    path, m = req.path, req.method
    if path == "sys/seal-status":
        return 200, svc.seal.status()
    if path == "sys/health":
        st = svc.seal.status()
        code = 501 if not st["initialized"] else 503 if st["sealed"] else 429 if svc.standby else 200
        wanted = req.query.get("sealedcode", "")
        if st["sealed"] and st["initialized"] and wanted.isdigit() and 200 <= int(wanted) <= 599:
            code = int(wanted)       # Vault lets probes choose the sealed code
        return code, {"initialized": st["initialized"], "sealed": st["sealed"], "standby": svc.standby,
                      "performance_standby": False, "replication_performance_mode": "disabled",
                      "replication_dr_mode": "disabled", "server_time_utc": int(svc.clock()),
                      "version": st["version"], "cluster_name": "stratum", "cluster_id": ""}
    if path == "sys/leader":
        if svc.ha is not None:
            return 200, {"ha_enabled": True, "is_self": not svc.standby, "active_time": "",
                         "leader_address": svc.ha.leader(), "leader_cluster_address": "",
                         "performance_standby": False, "performance_standby_last_remote_wal": 0}
        return 200, {"ha_enabled": False, "is_self": True, "active_time": "", "leader_address": "",
                     "leader_cluster_address": "", "performance_standby": False,
                     "performance_standby_last_remote_wal": 0}
    if path == "sys/init":
        if m == "GET":
            return 200, {"initialized": svc.seal.config() is not None}
        if m in ("PUT", "POST"):
            shares, threshold = req.body.get("secret_shares"), req.body.get("secret_threshold")
            fmt = req.body.get("share_format", "slip39")
            if not isinstance(shares, int) or not isinstance(threshold, int) or fmt not in FORMATS:
                raise BadRequest("send secret_shares and secret_threshold (numbers) and optionally "
                                 "share_format (slip39 or base64)")
            return 200, svc.initialize(shares, threshold, fmt)
    if path == "sys/unseal" and m in ("PUT", "POST"):
        if req.body.get("reset"):
            svc.seal.reset()
            return 200, svc.seal.status()
        key = req.body.get("key")
        if not isinstance(key, str) or not key.strip():
            raise BadRequest("missing required 'key' parameter")
        return 200, svc.unseal(key)
    raise Unsupported(f"unsupported operation {m} on {path}")


def sys(svc: VaultService, req: ApiRequest, entry: TokenEntry) -> Answer:
    """sys/seal, sys/rotate, sys/key-status, sys/mounts, sys/audit-hash."""
    path, m = req.path, req.method
    if path == "sys/seal" and m in ("PUT", "POST"):
        svc.seal_now()
        return 204, None
    if path == "sys/rotate" and m in ("PUT", "POST"):
        svc.barrier.rotate()
        return 204, None
    if path == "sys/key-status" and m == "GET":
        return 200, {"data": svc.barrier.key_status(), **svc.barrier.key_status()}
    if path == "sys/mounts" and m == "GET":
        listing = {p: e.describe() for p, e in svc.mounts.entries.items()}
        return 200, {"data": listing, **listing}
    if path.startswith("sys/mounts/"):
        target = path[len("sys/mounts/"):]
        if m in ("PUT", "POST"):
            svc.mounts.enable(target, req.body)
            return 204, None
        if m == "DELETE":
            svc.mounts.disable(target)
            return 204, None
        if m == "GET":
            found = svc.mounts.entries.get(target.strip("/") + "/")
            if found is None:
                raise NotFound()
            return 200, {"data": found.describe()}
    if path == "sys/internal/specs/openapi" and m == "GET":
        from reconcilers.vault.service.openapi import document

        return 200, document()
    if path.startswith("sys/leases/"):
        return _leases(svc, req)
    if path.startswith("sys/audit-hash/") and m in ("PUT", "POST"):
        value = req.body.get("input")
        if not isinstance(value, str):
            raise BadRequest("send {\"input\": \"<the string to hash>\"}")
        digest = svc.audit.hash(value)
        return 200, {"data": {"hash": digest}, "hash": digest}
    raise NotFound(f"no handler for route '{path}'. route entry not found.")


def _leases(svc: VaultService, req: ApiRequest) -> Answer:
    """sys/leases/* of the database engine(s): the mount is the one the lease id (or prefix) starts with;
    tidy runs on every database mount."""
    from reconcilers.vault.database.api import sys_leases

    rest = req.path[len("sys/leases/"):]
    engines = [e for e in svc.mounts.entries.values() if e.type == "database"]
    if rest == "tidy":
        answer: Answer = (204, None)
        for entry in engines:
            status, body = sys_leases(req.method, rest, req.body, svc.mounts.store_of(entry), mount=entry.path[:-1])
            answer = (int(status), body)
        return answer
    target = str(req.body.get("lease_id") or req.body.get("prefix") or rest.partition("/")[2])
    for entry in engines:
        if (target + "/").startswith(entry.path):
            status, body = sys_leases(req.method, rest, req.body, svc.mounts.store_of(entry), mount=entry.path[:-1])
            return int(status), body
    raise BadRequest("no lease with that id or prefix: lease ids start with a database mount's path "
                     "(database/creds/<role>/<id>)")


def _token_arg(body: dict[str, Any], name: str = "token") -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise BadRequest(f"missing required '{name}' parameter")
    return value


def token(svc: VaultService, req: ApiRequest, entry: TokenEntry) -> Answer:
    """auth/token/create|create-orphan|lookup|lookup-self|renew|renew-self|revoke|revoke-self|*-accessor."""
    op, m, now = req.path[len("auth/token/"):], req.method, svc.clock()
    store = svc.tokens
    roles = Roles(store.store)
    if op == "roles" and (m == "LIST" or (m == "GET" and req.query.get("list") == "true")):
        return 200, {"data": {"keys": roles.names()}}
    if op.startswith("roles/"):
        name = op[len("roles/"):]
        if m in ("PUT", "POST"):
            roles.put(name, req.body)
            return 204, None
        if m == "GET":
            return 200, {"data": roles.describe(name)}
        if m == "DELETE":
            roles.delete(name)
            return 204, None
    if (op in ("create", "create-orphan") or op.startswith("create/")) and m in ("PUT", "POST"):
        body = dict(req.body)
        if op == "create-orphan":
            body["no_parent"] = True
        if body.get("id"):
            raise BadRequest("choosing a token's id is not supported: leave 'id' out")
        role = op[len("create/"):] if op.startswith("create/") else str(body.pop("role_name", "") or "")
        if role:
            body = roles.token_body(role, body)
        new_token, created = store.create(entry, body, by_role=bool(role))
        return 200, {"auth": created.auth(new_token), "data": None, "lease_duration": 0, "renewable": False}
    if op == "accessors" and (m == "LIST" or (m == "GET" and req.query.get("list") == "true")):
        return 200, {"data": {"keys": store.store.list("accessor/")}}
    if op == "lookup-self" and m in ("GET", "POST"):
        return 200, {"data": {**entry.describe(now), "id": req.token}}
    if op == "lookup" and m in ("PUT", "POST", "GET"):
        target = _token_arg(req.body) if m != "GET" else req.query.get("token", "")
        found = store.lookup(target)
        return 200, {"data": {**found.describe(now), "id": target}}
    if op == "lookup-accessor" and m in ("PUT", "POST"):
        return 200, {"data": store.by_accessor(_token_arg(req.body, "accessor")).describe(now)}
    if op in ("renew-self", "renew", "renew-accessor") and m in ("PUT", "POST"):
        renewing: TokenEntry = (entry if op == "renew-self" else store.by_accessor(_token_arg(req.body, "accessor"))
                  if op == "renew-accessor" else store.lookup(_token_arg(req.body)))
        renewed = store.renew(renewing, req.body.get("increment"))
        return 200, {"auth": {**renewed.auth(""), "client_token": req.token if op == "renew-self" else ""}}
    if op in ("revoke-self", "revoke", "revoke-accessor", "revoke-orphan") and m in ("PUT", "POST"):
        gone: TokenEntry = (entry if op == "revoke-self" else store.by_accessor(_token_arg(req.body, "accessor"))
                  if op == "revoke-accessor" else store.lookup(_token_arg(req.body)))
        store.revoke(gone)
        return 204, None
    raise Unsupported(f"unsupported operation {m} on auth/token/{op}") if op in (
        "create", "lookup-self", "renew-self", "revoke") else NotFound(f"no handler for route '{req.path}'")
