"""Carry out one engine action (declared_plan.py) on the running vault service.

Each action is idempotent: it compares the declaration with what the vault holds *now* and makes only the
difference (through the engines' own declared.py functions, which go through each engine's request handler),
so an action retried, resumed after a crash or run twice by two runs leaves the same state, and a failure
mid-way leaves every object either as it was or as declared, never half written. Key material is made inside
the vault and stays there: nothing returned here carries it.

    vault off (no service: `[vault] enabled` false, or a CLI run)  -> Waiting("the vault is disabled ...")
    sealed, or an HA standby                                      -> Waiting("the vault is sealed ...")
    a mount path taken by another engine, a transit key of another type -> TerminalError (the revision is wrong)
    the engine refuses the declaration (a bad statement, a
      min_decryption_version above the latest version)          -> TerminalError (no retry: the run rolls back)
    PostgreSQL unreachable, the vault's storage failing          -> TransientError (retried, then the run fails)
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from reconcilers.errors import TerminalError, TransientError
from reconcilers.vault.database import declared as db_declared
from reconcilers.vault.database import leases
from reconcilers.vault.database.errors import DatabaseUnreachable
from reconcilers.vault.errors import VaultError
from reconcilers.vault.pki import ca as pki_ca
from reconcilers.vault.pki import declared as pki_declared
from reconcilers.vault.pki.roles import Role
from reconcilers.vault.pki.storage import KeyValueStore, get_json
from reconcilers.vault.service.errors import BadRequest, ServiceError
from reconcilers.vault.transit import declare as transit_declare
from reconcilers.vault.transit import keys as transit_keys

if TYPE_CHECKING:
    from reconcilers.vault.service.core import VaultService

Resolve = Callable[[str], str]            # a secret reference -> its value (the secrets port, at apply time)
ENGINE_TYPE = {"transit-key": "transit", "pki-ca": "pki", "pki-role": "pki", "db-connection": "database",
               "db-role": "database", "db-static-role": "database"}


_MOUNTING = threading.Lock()


class Waiting(Exception):
    """The vault cannot take declarations now (disabled, sealed, standby): the action waits for a later run."""


def _open(service: VaultService | None) -> VaultService:
    if service is None:
        raise Waiting("the vault is disabled ([vault] enabled is false, or no daemon serves it): set "
                      "[vault] enabled = true in stratumd.toml, initialize and unseal it; the next run applies this")
    if service.barrier.sealed:
        raise Waiting("the vault is sealed: unseal it (`stratum vault unseal`); the next run applies this")
    if service.standby:
        raise Waiting("this node is an HA standby: the active node applies the repo's declarations")
    return service


def store_of(service: VaultService, mount: str, engine: str, where: str, create: bool) -> KeyValueStore | None:
    """The storage of mount `<mount>/`, mounted as `engine` when absent and `create`; None when absent."""
    path = mount.strip("/") + "/"
    entry = service.mounts.entries.get(path)
    if entry is None:
        if not create:
            return None
        with _MOUNTING:                   # actions run in parallel: two of one new mount must not both enable it
            entry = service.mounts.entries.get(path)
            if entry is None:
                try:
                    service.mounts.enable(path, {"type": engine, "description": f"declared in {where}"})
                except BadRequest as err:
                    raise TerminalError(f"cannot mount {path}: {'; '.join(err.messages)}", where=where,
                                        hint="rename the file") from err
                entry = service.mounts.entries[path]
    if entry.type != engine:
        raise TerminalError(f"the vault's mount {path} is a {entry.type} engine; the repo declares a {engine} "
                            "mount there", where=where,
                            hint=f"rename the file, or unmount {path} by hand (sys/mounts) if its data can go")
    store: KeyValueStore = service.mounts.store_of(entry)
    return store


def seen(service: VaultService | None, targets: Mapping[str, Mapping[str, Any]]) -> dict[str, tuple[bool, float]]:
    """What the open vault holds of each declared target (record from declared_plan.Item.record); {} when the
    vault is not open (nothing is known)."""
    if service is None or service.barrier.sealed or service.standby:
        return {}
    out: dict[str, tuple[bool, float]] = {}
    for target, rec in targets.items():
        kind, mount, name = str(rec["kind"]), str(rec["mount"]), str(rec["name"])
        try:
            store = store_of(service, mount, ENGINE_TYPE[kind], str(rec["source"]), create=False)
        except TerminalError:
            continue                          # apply reports it
        if store is None:
            out[target] = (False, 0.0)
        elif kind == "transit-key":
            key = transit_keys.load(store, name)
            out[target] = (key is not None, key.versions[key.latest_version].created if key else 0.0)
        elif kind == "pki-ca":
            out[target] = (store.get(pki_ca.CA_KEY) is not None, 0.0)
        else:
            folder = {"pki-role": "roles/", "db-connection": "config/", "db-role": "roles/",
                      "db-static-role": "static-roles/"}[kind]
            out[target] = (store.get(folder + name) is not None, 0.0)
    return out


def apply(service: VaultService | None, record: Mapping[str, Any], delete: bool, resolve: Resolve,
          prune: bool = True, now: float | None = None) -> tuple[str, bool]:
    """Bring one declared object to its declaration (or remove it): what was done, in words (no values), and
    whether the object is (still) the reconciler's: False once a removal is done."""
    vault = _open(service)
    kind, mount, name, where = str(record["kind"]), str(record["mount"]), str(record["name"]), str(record["source"])
    spec: dict[str, Any] = dict(record.get("spec", {}))
    moment = time.time() if now is None else now
    try:
        store = store_of(vault, mount, ENGINE_TYPE[kind], where, create=not delete)
        return _apply(vault, store, kind, mount, name, spec, where, delete, resolve, prune, moment)
    except (TerminalError, TransientError):
        raise
    except transit_keys.TransitError as err:
        cls = TransientError if err.status >= 500 else TerminalError
        raise cls(f"transit key {name}: {err.message}", where=where, hint="fix the declaration") from err
    except DatabaseUnreachable as err:
        raise TransientError(err.what, where=err.where or where, hint="check that the database is up") from err
    except VaultError as err:
        raise TerminalError(err.what, where=err.where or where, hint=err.hint or "fix the declaration") from err
    except ServiceError as err:
        raise TransientError(f"the vault could not store it: {'; '.join(err.messages)}", where=where,
                             hint="check the vault's storage backend; the next run tries again") from err


def _apply(vault: VaultService, store: KeyValueStore | None, kind: str, mount: str, name: str,
           spec: dict[str, Any], where: str, delete: bool, resolve: Resolve, prune: bool,
           moment: float) -> tuple[str, bool]:
    """`apply` once the vault is open and the mount's store found (None: the mount is not there)."""
    if delete:
        if store is None:
            return "nothing to delete: the mount is gone", False
        message, released = _delete(store, kind, mount, name, spec, prune, resolve)
        return message, not released
    assert store is not None
    if kind == "transit-key":
        return _transit(store, name, spec, moment, where), True
    if kind == "pki-ca":
        return _pki_ca(vault, store, mount, spec, where, moment), True
    if kind == "pki-role":
        return _pki_role(store, mount, name, spec, where, moment), True
    return _database(store, kind, mount, name, spec, where, resolve), True


def _transit(store: KeyValueStore, name: str, spec: Mapping[str, Any], now: float, where: str) -> str:
    want = transit_declare.Declared(**spec)
    done: list[str] = []
    # Two passes: a new key is created first, then given the policy that creating does not set
    # (min_decryption_version); the second pass of an existing key finds nothing left to do.
    for _ in range(2):
        changes, problems = transit_declare.plan({name: want}, store, now)
        if problems:
            raise TerminalError("; ".join(problems), where=where, hint="declare a new key and move to it")
        if not changes:
            break
        done += [transit_declare.apply(change, {name: want}, store) for change in changes]
    return "; ".join(done) or f"transit key {name} unchanged"


def _pki_role(store: KeyValueStore, mount: str, name: str, spec: Mapping[str, Any], where: str, now: float) -> str:
    if get_json(store, "roles/" + name) == Role.from_body(name, spec).to_json():
        return f"PKI role {mount}/{name} unchanged"
    pki_declared.apply({mount: pki_declared.MountSpec(mount, where, {}, {name: spec})}, {mount: store},
                       [pki_declared.Change(mount, "write-role", name, where)], dt.datetime.fromtimestamp(now, dt.UTC))
    return f"wrote PKI role {mount}/{name}"


def _pki_ca(vault: VaultService, store: KeyValueStore, mount: str, spec: Mapping[str, Any], where: str,
            now: float) -> str:
    issuer = spec.get("issuer")
    if get_json(store, pki_ca.CA_KEY) is not None:
        subject = pki_ca.load(store).cert.subject.rfc4514_string()
        if subject != f"CN={spec['common_name']}":
            return (f"kept the CA of {mount}/ ({subject}): a commit never replaces a CA; generate a new one by "
                    "hand (pki/root/generate) if it must change")
        return f"CA of {mount}/ unchanged"
    stores = {mount: store}
    if issuer:
        parent = store_of(vault, str(issuer), "pki", where, create=False)
        if parent is None or get_json(parent, pki_ca.CA_KEY) is None:
            raise TransientError(f"the issuer {issuer}/ has no CA yet", where=where,
                                 hint=f"declare its CA in vault/pki/{issuer}.ncl (applied before this one)")
        stores[str(issuer)] = parent
    change = pki_declared.Change(mount, "create-intermediate" if issuer else "create-root",
                                 str(spec["common_name"]), where)
    pki_declared.apply({mount: pki_declared.MountSpec(mount, where, dict(spec), {})}, stores, [change],
                       dt.datetime.fromtimestamp(now, dt.UTC))
    return f"generated the {'intermediate' if issuer else 'root'} CA of {mount}/ (its key stays in the vault)"


def _database(store: KeyValueStore, kind: str, mount: str, name: str, spec: Mapping[str, Any], where: str,
              resolve: Resolve) -> str:
    conns: dict[str, Any] = {name: dict(spec)} if kind == "db-connection" else {}
    dyn: dict[str, Any] = {name: dict(spec)} if kind == "db-role" else {}
    static: dict[str, Any] = {name: dict(spec)} if kind == "db-static-role" else {}
    mspec = db_declared.MountSpec(mount, where, conns, dyn, static)
    wanted = {"db-connection": "write-connection", "db-role": "write-role", "db-static-role": "write-static-role"}
    changes = [c for c in db_declared.plan(mspec, store) if c.target == name and c.action == wanted[kind]]
    if not changes:
        return f"{kind} {mount}/{name} unchanged"
    db_declared.apply(mspec, store, changes, resolve)
    return f"wrote {kind} {mount}/{name}"


def _delete(store: KeyValueStore, kind: str, mount: str, name: str, spec: Mapping[str, Any], prune: bool,
            resolve: Resolve) -> tuple[str, bool]:
    """Remove a declaration the repo dropped: (what was done, whether the reconciler stops owning it)."""
    if not prune:
        return f"kept {kind} {mount}/{name} (prune = false)", True
    if kind == "transit-key":
        key = transit_keys.load(store, name)
        if key is None:
            return f"transit key {name} already gone", True
        if not spec.get("deletion_allowed") or not key.deletion_allowed:
            return f"kept transit key {name}: it was not declared with deletion_allowed = true", True
        with transit_keys.WRITE_LOCK:
            store.delete(transit_keys.PREFIX + name)
        return f"deleted transit key {name} (its key material is gone)", True
    if kind == "pki-ca":
        return f"kept the CA of {mount}/: a commit never deletes a CA (certificates depend on it)", True
    if kind == "db-connection" and any(lease.db_name == name for lease in leases.all_leases(store)):
        # Its leases need it to be revoked: kept, still owned, so a later run deletes it once they are gone.
        return f"kept connection {mount}/{name}: live leases still use it (deleted by a run after they end)", False
    folder, action = {"pki-role": ("roles/", "delete-role"), "db-connection": ("config/", "delete-connection"),
                      "db-role": ("roles/", "delete-role"),
                      "db-static-role": ("static-roles/", "delete-static-role")}[kind]
    if store.get(folder + name) is None:
        return f"{kind} {mount}/{name} already gone", True
    if kind == "pki-role":
        pki_declared.apply({mount: pki_declared.MountSpec(mount, "", {}, {})}, {mount: store},
                           [pki_declared.Change(mount, action, name)])
    else:
        db_declared.apply(db_declared.MountSpec(mount, "", {}, {}, {}), store,
                          [db_declared.Change(mount, action, name)], resolve)
    return f"deleted {kind} {mount}/{name}", True
