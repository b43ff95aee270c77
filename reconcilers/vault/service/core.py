"""One vault: storage, barrier, seal, tokens, policies, audit and mounts; `handle` takes one API request.

A request goes through these steps (each a possible refusal):
  1. the unauthenticated sys endpoints (health, seal-status, init, unseal, leader) ... answered as Vault does
  2. sealed? ......................................................................... 503 "Vault is sealed"
  3. the token (X-Vault-Token or Authorization: Bearer) is live ...................... else 403
  4. Cedar allows the token's groups the capability on the path (root passes) ........ else 403, no hint
  5. the request is audited (fail closed) ............................................ else 500, not served
  6. the token's use is counted, the route answers, the response is audited
A read or list of a KV mount (which changes nothing) writes 5 and 6 together once the answer is known, still
before it is served: one write() instead of two (VaultService._read). Through the API on the event loop (the
file backend) the reads of one loop turn share that write(), and each answer waits for it (AuditLog batch).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from reconcilers.vault.service import policy as cedar
from reconcilers.vault.service import routes
from reconcilers.vault.service.audit import AuditLog, redact
from reconcilers.vault.service.barrier import Barrier
from reconcilers.vault.service.errors import BadRequest, NotFound, PermissionDenied, Sealed, ServiceError
from reconcilers.vault.service.mounts import MountEntry, Mounts, engine_handler
from reconcilers.vault.service.request import Answer, ApiRequest
from reconcilers.vault.service.seal import Seal
from reconcilers.vault.service.storage.base import KeyValueStore
from reconcilers.vault.service.tokens import TokenEntry, TokenStore

SALT_PATH = "core/audit-salt"
SELF_SERVICE = ("auth/token/lookup-self", "auth/token/renew-self", "auth/token/revoke-self")   # Vault's default policy
UNAUTHENTICATED = ("sys/health", "sys/seal-status", "sys/init", "sys/unseal", "sys/leader")
BARRIER_CACHE_ENTRIES = 4096
KV_READS = ("read", "list")      # capabilities that change nothing on a KV mount (see VaultService._read)


class VaultService:
    """The vault behind the API (thread-safe: the listener calls it from worker threads)."""

    def __init__(self, store: KeyValueStore, audit_path: Path, storage_type: str = "file",
                 clock: Callable[[], float] = time.time, audit_max_bytes: int = 64 * 1024 * 1024) -> None:
        self.store = store
        self.storage_type = storage_type
        # Decrypted entries kept in memory only on the file backend: one node alone writes it (HA needs a
        # shared backend, where another node's writes would not drop what this one kept).
        self.barrier = Barrier(store, cache_entries=BARRIER_CACHE_ENTRIES if storage_type == "file" else 0)
        self.seal = Seal(store, self.barrier)
        self.tokens = TokenStore(self.barrier.view("sys/token/"), clock)
        self.mounts = Mounts(self.barrier)
        self.audit = AuditLog(audit_path, audit_max_bytes)
        self.authz = cedar.Authorizer()
        self.clock = clock
        self._lock = threading.Lock()
        self.on_open: list[Callable[[], None]] = []     # called once the barrier opens (the reconciler's KV sync)
        # Called inside sys/init while the new barrier is open (the daemon's key moves in), and at sys/seal.
        self.on_init: list[Callable[[Barrier], None]] = []
        self.on_seal: list[Callable[[], None]] = []
        self.standby = False                            # HA: a standby redirects to the active node (ha.py)
        self.ha: Any = None                             # the ha.Coordinator when HA is on

    # -- seal lifecycle --------------------------------------------------------------------------------
    def initialize(self, shares: int, threshold: int, fmt: str = "slip39") -> dict[str, Any]:
        """sys/init: shares and the root token, returned once; the vault stays sealed."""
        with self._lock:
            root, parts = self.seal.init(shares, threshold, fmt)
            self.barrier.unseal(root)
            try:
                self.barrier.put(SALT_PATH, os.urandom(32))
                self.mounts.load()
                token, _ = self.tokens.create(None, {"policies": ["root"]})
                for callback in self.on_init:
                    callback(self.barrier)
            finally:
                self.barrier.seal()
        return {"keys": parts, "keys_base64": parts, "root_token": token, "share_format": fmt}

    def _opened(self) -> None:
        """After the barrier opens: the salt and the mount table."""
        salt = self.barrier.get(SALT_PATH)
        self.audit.set_salt(salt or b"")
        self.mounts.load()
        for callback in self.on_open:
            callback()

    def unseal(self, key: str) -> dict[str, Any]:
        """sys/unseal with one share; the status after it."""
        was_sealed = self.barrier.sealed
        if self.seal.submit(key) and was_sealed:
            self._opened()
        return self.seal.status()

    def unseal_with_key(self, root: bytes) -> None:
        """Auto-unseal (key file, systemd credential)."""
        self.seal.unseal_with_key(root)
        self._opened()

    def become_active(self) -> None:
        """HA: this node now serves; reload what the previous active node may have changed."""
        if not self.barrier.sealed:
            self.barrier.reload()
            self.tokens.forget()
            self._opened()
        self.standby = False

    def seal_now(self) -> None:
        """sys/seal."""
        self.seal.seal()
        self.mounts.entries = {}
        self.tokens.forget()
        self.audit.forget()
        for callback in self.on_seal:
            callback()

    def set_policies(self, files: dict[str, str]) -> list[cedar.PolicyProblem]:
        """Put the repo's policies in force when they all check; their problems otherwise (old ones stay)."""
        problems = cedar.check(files)
        if not problems:
            self.authz.load(files)
        return problems

    def ensure_mounts(self, mounts: tuple[tuple[str, str, int, str], ...]) -> list[str]:
        """The repo's declared mounts (vault/mounts.ncl), each mounted when absent; what was done per mount.
        Nothing while sealed or standby (done again when the vault opens or this node becomes active)."""
        if self.barrier.sealed or self.standby:
            return []
        return [f"{path}: {self.mounts.ensure(path, kind, version, about)}" for path, kind, version, about in mounts]

    def ensure_roles(self, declared: tuple[tuple[str, str], ...] | None) -> list[str]:
        """The repo's token roles (vault/token_roles.ncl); None: the repo says nothing (leave roles alone)."""
        if declared is None or self.barrier.sealed or self.standby:
            return []
        from reconcilers.vault.service.roles import Roles

        return Roles(self.barrier.view("sys/token/")).ensure(declared)

    def reconcile_kv(self, kv_path: str, values: dict[str, Any] | None) -> str:
        """What the repo declares at `kv_path` ("kv/app/db"): a new KV v2 version when `values` differ from the
        current one, a soft delete of the current version when None. Audited as the reconciler; what was done
        ("sealed" when the vault cannot take it now: the reconciler publishes again at unseal)."""
        if self.barrier.sealed:
            return "sealed"
        if self.standby:
            return "standby"           # the active node publishes (it runs the same repo)
        found = self.mounts.find(kv_path)
        if found is None or found[0].type != "kv" or found[0].version != 2:
            return f"no kv v2 mount for {kv_path}"
        engine, rest = self.mounts.engine(found[0]), found[1].strip("/")
        current: dict[str, Any] | None = None
        try:
            status, body = engine.read(rest, 0)
            current = body["data"]["data"] if status == 200 and body else None
        except NotFound:
            current = None
        h = self.audit.hash
        who = {"display_name": "stratum-reconciler", "policies": ["root"]}
        if values is None:
            if current is None:
                return "absent"
            self.audit.write({"type": "reconcile", "auth": who, "request": {"operation": "delete", "path": kv_path}})
            engine.handle("DELETE", f"data/{rest}", {}, {})
            return "soft-deleted"
        if current == values:
            return "unchanged"
        self.audit.write({"type": "reconcile", "auth": who,
                          "request": {"operation": "update", "path": kv_path, "data": cedar_free(values, h)}})
        version = engine.write(rest, values, None)["version"]
        return f"version {version}"

    # -- requests ---------------------------------------------------------------------------------------
    def handle(self, req: ApiRequest, waits: list[Awaitable[None]] | None = None) -> Answer:
        """One request (the numbered steps of the module docstring). With `waits` (the API on the event loop)
        a KV read's audit entries join the loop turn's batch (AuditLog.write_exchange) and what to wait for
        is added to it: the caller answers only once that is done (it raises AuditUnavailable otherwise)."""
        if req.path in UNAUTHENTICATED or req.path.startswith("sys/init"):
            return routes.open_sys(self, req)
        if self.barrier.sealed:
            raise Sealed()
        if self.standby:
            raise self._redirect(req)
        entry = self.tokens.lookup(req.token)
        found = self.mounts.find(req.path)
        capability, mount = self._capability(req, found)
        seen = self._audited(req, entry)
        if not entry.is_root and req.path not in SELF_SERVICE and not self.authz.allowed(
                entry.accessor, entry.display_name, entry.policies, capability, req.path, mount,
                {"time": int(self.clock()), "source": req.remote, "method": req.method}):
            self.audit.write(self._response(seen, 403, {"errors": ["permission denied"]}))
            raise PermissionDenied()
        if capability in KV_READS and found is not None and found[0].type == "kv" and not entry.num_uses:
            return self._read(req, entry, found, seen, waits)
        self.audit.write({"type": "request", **seen})
        if entry.num_uses:
            entry = self.tokens.use(req.token)
        try:
            status, body = self._route(req, entry, found)
        except ServiceError as err:
            self.audit.write(self._response(seen, err.status, {"errors": err.messages}))
            raise
        self.audit.write(self._response(seen, status, body))
        return status, body

    def _read(self, req: ApiRequest, entry: TokenEntry, found: tuple[MountEntry, str], seen: dict[str, Any],
              waits: list[Awaitable[None]] | None) -> Answer:
        """A read or list of a KV mount: its request and response entries are written together, in one write()
        once the answer is known and before anyone sees it. Still no unaudited access: a KV read changes
        nothing, and an answer whose entries cannot be written is refused (500) as before; a request that
        fails unexpectedly is audited alone before its 500."""
        mount, rest = found
        engine = self.mounts.engine(mount)
        try:
            if mount.version == 2 and rest.startswith("data/") and req.method == "GET" and not req.query:
                status, body = engine.read_data(rest[5:])      # what _route would reach, without the dispatch
            else:
                status, body = self._route(req, entry, found)
        except ServiceError as err:
            self.audit.write_exchange(seen, {"status": err.status, "data": redact({"errors": err.messages},
                                                                                   self.audit.hash)})
            raise
        except BaseException:
            self.audit.write({"type": "request", **seen})
            raise
        if body is not None and engine.shares(body):
            # The engine's kept answer (unchanged since it was kept): its redaction is kept with it.
            data = self.audit.redact_shared(body)
        else:
            data = redact(body, self.audit.hash) if body is not None else None
        written = self.audit.write_exchange(seen, {"status": status, "data": data}, batch=waits is not None)
        if waits is not None and written is not None:
            waits.append(written)
        return status, body

    def _audited(self, req: ApiRequest, entry: TokenEntry) -> dict[str, Any]:
        """The `auth` and `request` parts of a request's audit entries, digested once for both of its lines
        (the request's, then the response's): the same token, accessor and body each time."""
        h = self.audit.hash
        return {"auth": {"accessor": h(entry.accessor), "client_token": h(req.token), "policies": list(entry.policies),
                         "display_name": entry.display_name},
                "request": {"operation": req.method.lower(), "path": req.path, "remote_address": req.remote,
                            "data": redact(req.body, h) if req.body is not None else None}}

    def _response(self, seen: dict[str, Any], status: int, body: dict[str, Any] | None) -> dict[str, Any]:
        """The response's audit entry."""
        return {"type": "response", **seen,
                "response": {"status": status, "data": redact(body, self.audit.hash) if body is not None else None}}

    def _capability(self, req: ApiRequest, found: tuple[MountEntry, str] | None) -> tuple[str, str]:
        """(Cedar action, mount) of a request (`found`: its mount); POST/PUT are create or update by whether the
        target exists."""
        m = req.method
        mount = found[0].path if found else req.path.split("/")[0] + "/"
        if req.path.startswith(("sys/rotate", "sys/seal", "sys/mounts/")) and m != "GET":
            return "sudo", mount
        if req.path == "auth/token/accessors":
            return "sudo", mount             # every token's accessor: Vault asks sudo for this list
        if m == "LIST" or (m == "GET" and req.query.get("list") == "true"):
            return "list", mount
        if m in ("GET", "HEAD"):
            return "read", mount
        if m == "DELETE":
            return "delete", mount
        if found is not None and found[0].type == "kv" and m in ("POST", "PUT"):
            store = self.mounts.store_of(found[0])
            rest = found[1].strip("/")
            target = (rest if found[0].version == 1 else
                      "meta/" + rest.partition("/")[2] if rest.startswith("data/") else "")
            if target and "//" not in target and not target.endswith("/"):
                try:
                    return ("update" if store.get(target) is not None else "create"), mount
                except ServiceError:
                    return "update", mount
        return "update", mount

    def _redirect(self, req: ApiRequest) -> ServiceError:
        """307 to the same path on the active node (or 503 while none is known)."""
        leader = self.ha.leader() if self.ha is not None else ""
        if not leader:
            return ServiceError("this node is a standby and no active node is known yet: retry shortly", status=503)
        query = urlencode(req.query)
        err = ServiceError("this node is a standby: use the active node", status=307)
        err.headers = [("location", f"{leader}/v1/{quote(req.path)}" + (f"?{query}" if query else ""))]
        return err

    def _route(self, req: ApiRequest, entry: TokenEntry, found: tuple[MountEntry, str] | None) -> Answer:
        if req.path.startswith("sys/"):
            return routes.sys(self, req, entry)
        if req.path.startswith("auth/token/"):
            return routes.token(self, req, entry)
        if found is None:
            raise NotFound(f"no handler for route '{req.path}'. route entry not found.")
        mount, rest = found
        if mount.type != "kv":
            handler = engine_handler(mount.type)
            if handler is None:
                raise NotFound(f"the {mount.type} engine is not installed in this daemon")
            method = "LIST" if req.method == "GET" and req.query.get("list") == "true" else req.method
            status, body = handler(method, rest.strip("/"), req.body, self.mounts.store_of(mount), mount.path)
            return int(status), body
        result: Answer = self.mounts.engine(mount).handle(req.method, rest, req.body, req.query)
        return result


def cedar_free(value: Any, digest: Callable[[str], str]) -> Any:
    """What the audit log keeps of a body: every string value digested (keys stay readable)."""
    return redact(value, digest) if value is not None else None


def body_json(raw: bytes) -> dict[str, Any]:
    """A request body as a JSON object ({} when empty); BadRequest otherwise."""
    if not raw.strip():
        return {}
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as err:
        raise BadRequest(f"failed to parse JSON input: {str(err)[:120]}") from err
    if not isinstance(doc, dict):
        raise BadRequest("the body must be a JSON object")
    if _depth(doc) > MAX_DEPTH:
        raise BadRequest(f"the body nests deeper than {MAX_DEPTH} levels")
    return doc


MAX_DEPTH = 64      # nesting a request body may have (deeper ones would exhaust recursion when stored)


def _depth(doc: Any) -> int:
    """How deep `doc` nests (iterative: a deep body cannot exhaust the stack here)."""
    deepest, stack = 0, [(doc, 1)]
    while stack:
        node, level = stack.pop()
        deepest = max(deepest, level)
        if level > MAX_DEPTH:
            return level
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        stack.extend((child, level + 1) for child in children if isinstance(child, dict | list))
    return deepest
