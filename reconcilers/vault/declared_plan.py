"""What the repo declares for the vault's engines, as actions of the vault reconciler.

    vault/transit/*.ncl    keys of the `transit/` mount            (contract TransitKeys, transit/declare.py)
    vault/pki/<m>.ncl      the CA of PKI mount <m>/ and its roles  (contract PkiMount, pki/declared.py)
    vault/database/<m>.ncl connections, roles and static roles of database mount <m>/ (database/declared.py)

1. `load` reads them (one loader: reconcilers/vault/declared.py) into `Item`s: one per key, CA, role or
   connection, each with a canonical JSON spec (names and policy only: a connection's password is a secret
   reference, never a value) and the targets it depends on (a role on its CA or connection, an intermediate CA
   on its issuer, a connection on the action loading the manifest that holds its password).
2. `plan` diffs the items against what the vault reconciler applied before (its inventory: target -> spec
   fingerprint) and, when the vault is open, against what the vault holds (`Seen`): create what is new or
   missing, update what changed, rotate a transit key whose latest version is older than its
   `auto_rotate_period`, delete what the repo no longer declares. Pure: no vault is touched here.
   An action that found the vault sealed or off records its item as `waiting` in the inventory: it is not
   planned again while the vault stays closed or unknown (a plan after such a run is empty), and is planned
   again, and reported as drift, as soon as an open vault is observed.
The actions' targets all start with `engines/` (manifests' targets start with `secrets/`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from reconcilers.base import Action, ActionKind, InventoryItem, Problem, freeze
from reconcilers.vault.declared import load_files
from reconcilers.vault.errors import VaultError

if TYPE_CHECKING:
    from reconcilers.ports import Evaluator, SecretsPort, Snapshot
    from reconcilers.vault.transit import declare as transit_declare

NAME = "vault"
ENGINES = "engines/"                       # the prefix of every engine action's target
KIND = "vault_engine"                      # their inventory kind
TRANSIT_PREFIX = "vault/transit/"
TRANSIT_CONTRACT = '(import "vault.ncl").TransitKeys'
TRANSIT_MOUNT = "transit"


@dataclass(frozen=True, slots=True)
class Item:
    """One declared object of an engine."""

    kind: str              # transit-key | pki-ca | pki-role | db-connection | db-role | db-static-role
    mount: str             # the mount's path without the slash: "transit", "ops", "app"
    name: str              # the key, role or connection name ("" for a CA)
    source: str            # the file that declares it
    spec: str              # canonical JSON of what is declared (never a secret value)
    depends: tuple[str, ...] = ()          # action ids that must complete first

    @property
    def target(self) -> str:
        """Where it lives, as the Vault API names it: engines/transit/keys/k, engines/ops/ca, ..."""
        return ENGINES + {"transit-key": f"{self.mount}/keys/{self.name}", "pki-ca": f"{self.mount}/ca",
                          "pki-role": f"{self.mount}/roles/{self.name}",
                          "db-connection": f"{self.mount}/config/{self.name}",
                          "db-role": f"{self.mount}/roles/{self.name}",
                          "db-static-role": f"{self.mount}/static-roles/{self.name}"}[self.kind]

    @property
    def fingerprint(self) -> str:
        """A short digest of the spec: what `stratum plan` shows, and what tells a change."""
        return hashlib.sha256(self.spec.encode()).hexdigest()[:12]

    def record(self) -> dict[str, Any]:
        """The action payload and inventory data: everything apply needs (no secret values)."""
        return {"kind": self.kind, "mount": self.mount, "name": self.name, "source": self.source,
                "spec": json.loads(self.spec), "fingerprint": self.fingerprint}


@dataclass(frozen=True, slots=True)
class Engines:
    """A revision's engine declarations (items by target)."""

    items: Mapping[str, Item] = field(default_factory=dict)


# What the vault holds of a declared target when it is open: (present, created time of a transit key's latest
# version). Absent from the mapping: unknown (the vault is sealed, disabled, or this is a CLI plan).
Seen = Mapping[str, tuple[bool, float]]


def _spec(value: Any) -> str:
    return freeze(value)


def _transit_build(name: str, source: str, value: Mapping[str, Any]) -> dict[str, transit_declare.Declared]:
    from reconcilers.vault.transit import declare as transit_declare

    keys, problems = transit_declare.declared_from(value)
    if problems:
        raise VaultError("; ".join(problems), where=source,
                         hint="key names: letters, digits, _ . - (at most 128); periods such as 720h or 30d")
    return keys


def _reference(value: Any) -> str:
    """A connection's password reference as the secrets port takes it: "kv/db/main#password" (or the record
    { secret = "kv/db/main", key = "password" })."""
    if isinstance(value, Mapping):
        return f"{value.get('secret', '')}#{value.get('key', '')}"
    return str(value)


def nickel_inputs(snap: Snapshot) -> list[tuple[list[str], str | None]]:
    """The (files, contract) groups `load` evaluates, for the daemon to evaluate ahead in one run."""
    if not snap.entries("vault/", (".ncl",)):
        return []
    from reconcilers.vault.database import declared as db_declared
    from reconcilers.vault.pki import declared as pki_declared

    groups: list[tuple[list[str], str | None]] = []
    for prefix, contract in ((TRANSIT_PREFIX, TRANSIT_CONTRACT), (pki_declared.PREFIX, pki_declared.CONTRACT),
                             (db_declared.PREFIX, db_declared.CONTRACT)):
        paths = [e.path for e in snap.entries(prefix, (".ncl",)) if "/" not in e.path[len(prefix):]]
        if paths:
            groups.append((paths, contract))
    return groups


def load(evaluator: Evaluator | None, snap: Snapshot, secrets: SecretsPort | None) -> tuple[Engines, list[Problem]]:
    """Every engine declaration of `snap`, and the located problems (a password reference that names no
    manifest of the revision, or one the daemon cannot decrypt, is one)."""
    items: list[Item] = []
    if not snap.entries("vault/", (".ncl",)):
        # No engine is declared: an idle daemon then never imports the engines' modules (the PKI's pull in
        # cryptography.x509) nor keeps them in memory (bench/idle.py).
        return Engines({}), []
    from reconcilers.vault.database import declared as db_declared
    from reconcilers.vault.pki import declared as pki_declared
    from reconcilers.vault.transit import declare as transit_declare

    transit, problems = load_files(evaluator, snap, TRANSIT_PREFIX, TRANSIT_CONTRACT, _transit_build,
                                   "transit key file")
    declared_in: dict[str, str] = {}
    for file_name, keys in sorted(transit.items()):
        source = f"{TRANSIT_PREFIX}{file_name}.ncl"
        for key_name, key in sorted(keys.items()):
            if key_name in declared_in:
                problems.append(Problem(f"transit key {key_name} is also declared in {declared_in[key_name]}",
                                        path=source, reconciler=NAME, hint="declare each key in one file"))
                continue
            declared_in[key_name] = source
            fields = {f: getattr(key, f) for f in transit_declare.Declared.__slots__}
            items.append(Item("transit-key", TRANSIT_MOUNT, key_name, source, _spec(fields)))
    pki, found = pki_declared.load(evaluator, snap)
    problems += found
    for mount, spec in sorted(pki.items()):
        ca_deps = (f"{NAME}:{ENGINES}{spec.issuer}/ca",) if spec.issuer else ()
        items.append(Item("pki-ca", mount, "", spec.source, _spec(dict(spec.ca)), ca_deps))
        for role, body in sorted(spec.roles.items()):
            items.append(Item("pki-role", mount, role, spec.source, _spec(dict(body)),
                              (f"{NAME}:{ENGINES}{mount}/ca",)))
    database, found = db_declared.load(evaluator, snap)
    problems += found
    for mount, dbspec in sorted(database.items()):
        for conn_name, conn in sorted(dbspec.connections.items()):
            conn = dict(conn)
            deps: tuple[str, ...] = ()
            if "password_secret" in conn:
                conn["password_secret"] = _reference(conn["password_secret"])
                located = _locate(secrets, snap, conn["password_secret"], dbspec.source, conn_name, problems)
                deps = (located,) if located else ()
            items.append(Item("db-connection", mount, conn_name, dbspec.source, _spec(conn), deps))
        for kind, roles in (("db-role", dbspec.roles), ("db-static-role", dbspec.static_roles)):
            for role, body in sorted(roles.items()):
                items.append(Item(kind, mount, role, dbspec.source, _spec(dict(body)),
                                  (f"{NAME}:{ENGINES}{mount}/config/{body['db_name']}",)))
    return Engines({i.target: i for i in items}), problems


def _locate(secrets: SecretsPort | None, snap: Snapshot, reference: str, source: str, conn: str,
            problems: list[Problem]) -> str:
    """The action that loads the manifest holding `reference` ("" when unknown); a problem when it names none."""
    if secrets is None:
        return ""
    from reconcilers.errors import StratumError

    try:
        return secrets.locate(snap, reference).action_id
    except StratumError as err:
        problems.append(Problem(f"connections.{conn}.password_secret: {err.what}", path=source, reconciler=NAME,
                                hint=err.hint))
        return ""


def observed_records(engines: Engines, inventory: Sequence[InventoryItem]) -> dict[str, dict[str, Any]]:
    """The records whose state in the vault `plan` and `drift` need: every declared item, and every owned one
    whose removal waits."""
    out = {t: r for t, r in owned(inventory).items() if r.get("waiting") and t not in engines.items}
    return out | {t: i.record() for t, i in engines.items.items()}


def drifted(engines: Engines, inventory: Sequence[InventoryItem], seen: Seen) -> list[Problem]:
    """Applied (or waiting) declarations the open vault does not match: "policy correct", so the daemon's
    drift check runs the revision again (after an unseal, say). A pending create is the plan's, not drift."""
    problems: list[Problem] = []
    for target, record in sorted(owned(inventory).items()):
        if target not in seen:
            continue                      # the vault is closed or off: nothing is known
        declared = engines.items.get(target)
        if declared is not None and not seen[target][0]:
            why = "is declared but not in the vault"
        elif record.get("waiting"):
            why = "waited for the vault, which is open now"
        else:
            continue
        problems.append(Problem(f"{record.get('kind', 'engine object')} {target.removeprefix(ENGINES)} {why}; "
                                "policy correct", path=str(record.get("source", "")), reconciler=NAME))
    return problems


def owned(inventory: Sequence[InventoryItem]) -> dict[str, dict[str, Any]]:
    """What the vault reconciler applied of the engines before: target -> its record."""
    out: dict[str, dict[str, Any]] = {}
    for item in inventory:
        if item.reconciler == NAME and item.resource_id.startswith(ENGINES):
            try:
                out[item.resource_id] = dict(json.loads(item.data))
            except ValueError:
                out[item.resource_id] = {}
    return out


def _rotation_due(item: Item, seen: Seen, now: float) -> bool:
    if item.kind != "transit-key":
        return False
    period = int(json.loads(item.spec).get("auto_rotate_period", 0))
    present, created = seen.get(item.target, (False, 0.0))
    return bool(period) and present and now - created >= period


def plan(engines: Engines, inventory: Sequence[InventoryItem], seen: Seen, now: float,
         prune: bool = True) -> list[Action]:
    """The engine actions (see the module docstring); summaries name targets and fingerprints, never values."""
    before = owned(inventory)
    actions: list[Action] = []
    for target, item in sorted(engines.items.items()):
        old = before.get(target)
        kind: ActionKind
        if old is None:
            kind, why = "create", f"declared in {item.source}"
        elif old.get("fingerprint") != item.fingerprint:
            kind, why = "update", f"spec {str(old.get('fingerprint', '?'))[:12]} -> {item.fingerprint}"
        elif target in seen and not seen[target][0]:
            kind, why = "create", "missing in the vault"
        elif old.get("waiting") and target in seen:
            kind, why = "update", "its last action waited for the vault, which is open now"
        elif _rotation_due(item, seen, now):
            kind, why = "update", "rotate: the latest version is older than auto_rotate_period"
        else:
            continue
        record = item.record()
        actions.append(Action(id=f"{NAME}:{target}", reconciler=NAME, kind=kind, target=target,
                              summary=f"{kind} {item.kind} {target.removeprefix(ENGINES)} (spec {item.fingerprint}; "
                                      f"{why})",
                              change=freeze({"engine": record}), depends_on=item.depends))
    for target, record in sorted(before.items()):
        if target in engines.items or (record.get("waiting") and target not in seen):
            continue                      # declared; or its removal waits for the vault, still closed or off
        kept = _kept(record, prune)
        actions.append(Action(id=f"{NAME}:{target}", reconciler=NAME, kind="delete", target=target,
                              summary=f"delete {record.get('kind', 'engine object')} {target.removeprefix(ENGINES)}"
                                      + (f" -> kept ({kept})" if kept else ""),
                              change=freeze({"engine": record, "delete": True})))
    return actions


def _kept(record: Mapping[str, Any], prune: bool) -> str:
    """Why a removed declaration stays in the vault ("" when it is deleted)."""
    if not prune:
        return "prune = false"
    if record.get("kind") == "transit-key" and not dict(record.get("spec", {})).get("deletion_allowed"):
        return "the key was not declared with deletion_allowed = true"
    if record.get("kind") == "pki-ca":
        return "a commit never deletes a CA: certificates depend on it"
    return ""
