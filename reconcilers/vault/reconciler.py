"""The daemon side: verify changed manifests on each commit, decrypt them with the daemon's key only at apply,
and hold the plaintext in a bounded in-memory cache only.

 1. load      manifests (not decrypted), the rules and their signature file, from the commit
 2. validate  check.check_manifest (the same function the CLI runs) for each manifest, cached by everything
              the check depends on: (path, blob id, rules); replay against the versions this daemon applied
              (kept on disk: path -> version, never values). No private key is touched here.
 2b. judge    (admission, against the last good revision) a rules change must be signed by a signer trusted
              before it (rules_sig.py); a manifest's version must be above the last good revision's per path
 3. plan      one action per changed manifest (create/update/delete); payloads carry ids and versions only
 4. apply     decrypt with the daemon's key into the bounded plaintext cache (plaincache.py); the store keeps
              the verified ciphertext, so an evicted entry is decrypted again on lookup
A manifest the daemon is not a recipient of is verified but not loaded: teams may keep secrets from it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reconcilers.base import (
    Action,
    ActionKind,
    ApplyContext,
    InventoryItem,
    Outcome,
    PolicyResource,
    Problem,
    Reconciler,
    ReconcilerEnv,
    RunRecord,
    freeze,
)
from reconcilers.errors import StratumError, WaitingError
from reconcilers.ports import Evaluator as PortEvaluator
from reconcilers.ports import HttpMount, SecretsPort
from reconcilers.vault import check, declared_plan, envelope, rules_sig
from reconcilers.vault.backends import DEFAULT, Backend, get_backend
from reconcilers.vault.errors import NoKeyError, VaultError
from reconcilers.vault.fingerprints import FingerprintKey
from reconcilers.vault.keysource import FileKeySource, KeySealedError, KeySource, SealedKeySource
from reconcilers.vault.kvpath import kv_path_of
from reconcilers.vault.manifest import Manifest, load_document, split_document
from reconcilers.vault.plaincache import DEFAULT_LIMIT, PlainCache
from reconcilers.vault.rules import CONTRACT as RULES_CONTRACT
from reconcilers.vault.rules import RULES_PATH, Rules, load_snapshot
from reconcilers.vault.service import sync as service_sync
from reconcilers.vault.service.host import Publisher, ServiceHost

if TYPE_CHECKING:
    from reconcilers.ports import Snapshot
    from reconcilers.vault.pki.certrefs import CertIssuer

NAME = "vault"
VERIFIED_LIMIT = 20_000            # verification results kept (ciphertext and problems only)


@dataclass(frozen=True, slots=True)
class ManifestFile:
    """A manifest as committed: path, blob id, text."""

    path: str
    blob_id: str
    text: str


@dataclass(frozen=True, slots=True)
class VaultDesired:
    """What a commit asks for: its manifests, rules and rules signature (or the problems loading them)."""

    revision: str
    manifests: tuple[ManifestFile, ...]
    rules: Rules | None
    problems: tuple[Problem, ...] = ()
    rules_sig: str | None = None              # the text of <rules>.sig, when committed
    policies: tuple[tuple[str, str], ...] = ()   # vault/policies/*.cedar: (path, text) for the vault service
    # vault/transit, vault/pki, vault/database declarations (declared_plan.py): planned and applied as actions
    engines: declared_plan.Engines = field(default_factory=declared_plan.Engines)


@dataclass(frozen=True, slots=True)
class Verified:
    """The outcome of check.check_manifest for one (path, blob, rules): the manifest when it passed."""

    manifest: Manifest | None
    problems: tuple[Problem, ...]


@dataclass(frozen=True, slots=True, repr=False)
class StoredManifest:
    """One manifest in the store: its verified ciphertext and whether the daemon can open it (no values)."""

    blob_id: str
    version: int
    manifest: Manifest
    readable: bool                            # False: verified, but the daemon is not a recipient

    def __repr__(self) -> str:
        return f"StoredManifest(version={self.version}, blob={self.blob_id[:12]}, readable={self.readable})"


class VaultReconciler(Reconciler["VaultDesired", dict[str, tuple[str, int]]]):
    """The vault reconciler (see the module docstring)."""

    name = NAME
    judges_base = True                        # rules changes are judged by the base revision's signers

    @property
    def backend(self) -> Backend:
        """The crypto backend, loaded on first use: the default's `cryptography` (~45 ms, ~10 MB resident) is
        never imported for a repository without secret manifests (validate, plan, the idle daemon)."""
        return get_backend(self.backend_name)

    def __init__(
        self, env: ReconcilerEnv, key_source: KeySource | None = None, evaluator: PortEvaluator | None = None
    ) -> None:
        settings: dict[str, Any] = dict(env.settings.get("vault", {}))
        repo: dict[str, Any] = dict(env.repo_settings.get("vault", {}))
        self.state_dir = env.data_dir / "vault"
        key_file = Path(settings.get("key_file") or self.state_dir / "daemon.key")
        self.backend_name = str(settings.get("backend") or repo.get("backend") or DEFAULT)
        if self.backend_name != DEFAULT:
            get_backend(self.backend_name)        # an optional backend not installed here fails at start, named
        self.rules_path = str(repo.get("rules") or RULES_PATH)
        # The daemon's key: a file, or behind the vault's seal once the vault is initialized (keysource.py).
        self.key_source: KeySource = key_source or SealedKeySource(
            FileKeySource(key_file, backend=self.backend_name), self._barrier)
        self.scheduler = env.scheduler
        self._vault_service: Any = None           # the vault service, once built (its hooks set it)
        self.events = env.events
        self._waited_sealed = False               # an apply of the run in flight waited on the seal
        self._owe_rerun = False                   # ... and that run did not succeed: run again when it opens
        self._evaluator: PortEvaluator | None = evaluator or env.evaluator
        self._lock = threading.RLock()
        self._store: dict[str, StoredManifest] = {}
        self._verified: OrderedDict[tuple[str, str, str], Verified] = OrderedDict()
        self._versions_seen: dict[str, int] = {}            # blob id -> stratum.version (for judging replays)
        self.plain = PlainCache(int(settings.get("plaintext_cache", DEFAULT_LIMIT)))
        self._previous: dict[str, StoredManifest | None] = {}  # path -> before apply
        self._versions_file = self.state_dir / "versions.json"
        self._versions: dict[str, dict[str, Any]] = self._read_versions()
        self.stats = {"verified": 0, "cache_hits": 0}
        self.vault_api = ServiceHost(settings, self.state_dir)      # the Vault-compatible API (service/)
        self.publisher = Publisher(self.vault_api, self._published, prune=bool(repo.get("prune", True)))
        self.vault_api.on_built.append(self._seal_hooks)
        # revision -> what it declares for the vault service: (policies, mounts, token roles)
        self._policies: dict[str, tuple[tuple[tuple[str, str], ...], tuple[Any, ...], tuple[Any, ...]]] = {}

    # state on disk: last applied version per path (tombstones kept after delete, against replays) ---------
    def _read_versions(self) -> dict[str, dict[str, Any]]:
        try:
            data: dict[str, dict[str, Any]] = json.loads(self._versions_file.read_text())
            return data
        except (OSError, ValueError):
            return {}

    def _write_versions(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self._versions_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._versions, sort_keys=True))
        os.replace(tmp, self._versions_file)

    def policy_resources(self, desired: VaultDesired) -> list[PolicyResource]:
        """What change control authorizes: each manifest (kind secret), the rules file and each engine declaration;
        a manifest's digest is its blob id, so re-encrypting counts as a change while the plaintext stays unknown."""
        out = [PolicyResource(self.name, m.path, "secret", m.path, "vault", {}, m.blob_id[:16], m.path, 1)
               for m in desired.manifests]
        if desired.rules is not None:
            out.append(PolicyResource(self.name, RULES_PATH, "secret_rules", RULES_PATH, "vault", {},
                                      _digest(desired.rules), RULES_PATH, 1))
        # Engine declarations: "vault:engines/transit/keys/app" of kind transit-key, pki-ca, db-connection, ...
        out += [PolicyResource(self.name, t, i.kind, i.source, "vault", {}, i.fingerprint, i.source, 1)
                for t, i in sorted(desired.engines.items.items())]
        return out

    def close(self) -> None:
        """Drop every plaintext (the Nickel evaluator is the daemon's, not ours to stop); hand over the vault's
        HA lease."""
        self.plain.clear()
        if "certificates" in self.__dict__:
            self.certificates.close()
        self.vault_api.close()

    # the daemon's key behind the seal (keysource.py) ---------------------------------------------------------
    def _service(self) -> Any:
        # The service as its hooks saw it: during start-up (auto-unseal) the host has not published it yet.
        return self._vault_service or self.vault_api.service

    def _barrier(self) -> Any:
        service = self._service()
        return service.barrier if service is not None else None

    def _seal_hooks(self, service: Any) -> None:
        """sys/init moves the daemon's key into the new barrier; unseal adopts a key file left behind and runs
        the branch again when an apply waited on the seal; sys/seal forgets the key and every plaintext."""
        self._vault_service = service
        service.on_init.append(self._adopt_key)
        service.on_open.append(self._opened)
        service.on_seal.append(self._sealed)

    def _adopt_key(self, barrier: Any) -> None:
        from reconcilers.vault.service.errors import ServiceError

        if isinstance(self.key_source, SealedKeySource) and barrier is not None:
            try:
                self.key_source.adopt(barrier)
            except (StratumError, ServiceError, OSError, ValueError) as err:
                # The key stays where it is (the file); the next unseal tries again. Never a failed init.
                self._event("daemon_key_not_moved", f"the daemon's key stays in its file for now: {err}")

    def _opened(self) -> None:
        self._adopt_key(self._barrier())
        # Certificates that waited for the vault (their files left as they were, the run succeeded) are written
        # by a run now: the same path the renewal timer takes.
        waited = len(self.certificates.waiting())
        if (self._owe_rerun or waited) and self.scheduler is not None:
            self._owe_rerun = False
            self.scheduler.rerun("vault unsealed" + (f": {waited} certificate(s) waited for it" if waited else ""))

    def _sealed(self) -> None:
        if isinstance(self.key_source, SealedKeySource):
            self.key_source.forget()
        self.plain.clear()

    def _event(self, kind: str, message: str) -> None:
        if self.events is not None:
            self.events(kind, message)

    def waiting_on_seal(self, err: KeySealedError, where: str) -> WaitingError:
        """The retry-class error an apply raises while the daemon's key is sealed (remembered: a run that fails
        waiting is run again at unseal)."""
        self._waited_sealed = True
        return WaitingError(f"the daemon's key is behind the vault's seal: {err.hint}", where=where,
                            hint="`stratum vault unseal` (K of the unseal keys); the action then proceeds", after=2.0)

    def _nickel(self) -> PortEvaluator:
        if self._evaluator is None:
            raise StratumError("the vault reconciler was built without a Nickel evaluator, so it cannot read "
                               f"{self.rules_path}", hint="report this bug: the daemon hands one to every reconciler")
        return self._evaluator

    # 1. load --------------------------------------------------------------------------------------
    def nickel_inputs(self, snap: Snapshot) -> list[tuple[list[str], str | None]]:
        """The rules, mounts, token roles and engine declarations `load` evaluates (one run ahead, not six)."""
        groups: list[tuple[list[str], str | None]] = [
            ([path], contract) for path, contract in ((self.rules_path, RULES_CONTRACT),
                                                      (service_sync.MOUNTS_FILE, service_sync.MOUNTS_CONTRACT),
                                                      (service_sync.ROLES_FILE, service_sync.ROLES_CONTRACT))
            if snap.entry(path) is not None]
        return groups + declared_plan.nickel_inputs(snap)

    def load(self, snap: Snapshot) -> VaultDesired:
        """The commit's manifests (text, not decrypted), its rules and their signature."""
        files: list[ManifestFile] = []
        problems: list[Problem] = []
        for entry in snap.entries("secrets", (".yaml", ".yml")):
            try:
                files.append(ManifestFile(entry.path, entry.blob_id, snap.text(entry)))
            except VaultError as err:
                problems.append(Problem(err.what, path=entry.path, reconciler=NAME, hint=err.hint))
            except Exception as err:  # noqa: BLE001 one unreadable file is its own problem, never a failed load
                problems.append(Problem(str(getattr(err, "what", err)), path=entry.path, reconciler=NAME))
        rules: Rules | None = None
        if snap.entry(self.rules_path) is not None:
            # The same loader `stratum secret` uses on the staged tree (reconcilers/vault/secret_rules.load_repo).
            rules, found = load_snapshot(snap, self._nickel(), self.rules_path)
            problems += found
        elif files:
            problems.append(
                Problem(
                    "secret manifests but no rules file (trusted signers)",
                    path=self.rules_path,
                    reconciler=NAME,
                    hint="add secrets/rules.ncl",
                )
            )
        sig_text: str | None = None
        sig_entry = snap.entry(rules_sig.sig_path(self.rules_path))
        if sig_entry is not None:
            try:
                sig_text = snap.text(sig_entry, limit=rules_sig.MAX_SIG_BYTES)
            except Exception as err:  # noqa: BLE001 an unreadable signature is a located problem
                problems.append(Problem(str(getattr(err, "what", err)), path=sig_entry.path, reconciler=NAME))
        policies, found = service_sync.load_policies(snap)
        problems += found
        mounts, found = service_sync.load_mounts(snap, self._evaluator)
        problems += found
        roles, found = service_sync.load_roles(snap, self._evaluator)
        problems += found
        engines, found = declared_plan.load(self._evaluator, snap, self.secrets())
        problems += found
        with self._lock:
            self._policies[snap.revision] = (policies, mounts, roles)
            while len(self._policies) > 64:
                self._policies.pop(next(iter(self._policies)))
        return VaultDesired(snap.revision, tuple(files), rules, tuple(problems), sig_text, policies, engines)

    # 2. validate ------------------------------------------------------------------------------------
    def _verify(self, mf: ManifestFile, rules: Rules | None, rules_key: str) -> Verified:
        # The check reads the path (stratum.path binding, creation rules), the blob and the rules: all three
        # key the cache, so a manifest copied to another path is checked again, and fails there.
        key = (mf.path, mf.blob_id, rules_key)
        cached = self._verified.get(key)
        if cached is not None:
            self.stats["cache_hits"] += 1
            self._verified.move_to_end(key)
            return cached
        self.stats["verified"] += 1
        manifest, problems = check.check_manifest(self.backend, mf.text, mf.path, rules)
        result = Verified(manifest if not problems else None, tuple(problems))
        if manifest is not None:
            self._versions_seen[mf.blob_id] = manifest.meta.version
        self._verified[key] = result
        while len(self._verified) > VERIFIED_LIMIT:
            self._verified.popitem(last=False)
        return result

    def validate(self, desired: VaultDesired) -> list[Problem]:
        """Every problem of the commit's manifests; replays against the versions this daemon applied. Nothing
        is decrypted here: a revision that is only planned, or rejected, never produces plaintext."""
        with self._lock:
            rules_key = _digest(desired.rules)
            problems = list(desired.problems)
            for mf in desired.manifests:
                verified = self._verify(mf, desired.rules, rules_key)
                problems += verified.problems
                seen = self._versions.get(mf.path)
                m = verified.manifest
                if (
                    m is not None
                    and seen is not None
                    and seen.get("blob_id") != mf.blob_id
                    and m.meta.version <= int(seen["version"])
                ):
                    problems.append(_replay(mf.path, m.meta.version, int(seen["version"]), "applied"))
            return problems

    def _version(self, mf: ManifestFile) -> int | None:
        """A manifest's stratum.version (cached by blob: the version is in the signed bytes of that blob)."""
        if mf.blob_id not in self._versions_seen:
            try:
                _, meta = split_document(load_document(mf.text, mf.path), mf.path)
                version = meta.get("version") if isinstance(meta, dict) else None
            except VaultError:
                version = None
            if not isinstance(version, int) or isinstance(version, bool):
                return None
            self._versions_seen[mf.blob_id] = version
        return self._versions_seen[mf.blob_id]

    def judge(self, desired: VaultDesired, base: VaultDesired | None, base_name: str = "") -> list[Problem]:
        """Admission against the base (the last good revision): trust is never granted by the commit it
        protects. A rules change must be signed by a signer the base's rules trusted (rules_sig.judge), and
        each manifest's version must be above the base's version of the same path (no replay)."""
        if base is None:
            return []
        name = base_name or f"the last good revision {base.revision[:12]}"
        with self._lock:
            problems = rules_sig.judge(self.backend, desired.rules, desired.rules_sig, base.rules, base.rules_sig,
                                       self.rules_path, name)
            before = {mf.path: mf for mf in base.manifests}
            for mf in desired.manifests:
                old = before.get(mf.path)
                if old is None or old.blob_id == mf.blob_id:
                    continue
                new_v, old_v = self._version(mf), self._version(old)
                if new_v is not None and old_v is not None and new_v <= old_v:
                    problems.append(_replay(mf.path, new_v, old_v, name))
            return problems

    # 3. observe and plan ------------------------------------------------------------------------------
    def observe(self, desired: VaultDesired, inventory: list[InventoryItem]) -> dict[str, tuple[str, int]]:
        """What the store holds: path -> (blob id, version). A manifest this data directory applied before (its
        versions.json entry names the same blob and it was not unloaded since) is put back in the store from the
        commit, verified again by this process's validate: a new process (a restart, a one-shot `stratum plan`)
        sees what is applied as applied, instead of planning every manifest again and publishing a new KV version
        of each. Nothing is decrypted here. And, when the vault is open, what it holds of each declared engine
        object: engines/<target> -> ("present" or "absent", created time of a transit key's latest version)."""
        with self._lock:
            for mf in desired.manifests:
                seen = self._versions.get(mf.path)
                if (mf.path in self._store or seen is None or seen.get("unloaded")
                        or seen.get("blob_id") != mf.blob_id):
                    continue
                manifest = self._validated(mf.path, mf.blob_id)
                if manifest is not None:
                    self._store[mf.path] = StoredManifest(mf.blob_id, manifest.meta.version, manifest,
                                                          bool(seen.get("readable", True)))
            out = {p: (v.blob_id, v.version) for p, v in self._store.items()}
        records = declared_plan.observed_records(desired.engines, inventory)
        service = self.vault_api.service
        if records and service is not None:   # a closed or absent vault tells nothing: skip the engines' imports
            from reconcilers.vault import declared_apply

            for target, (present, created) in declared_apply.seen(service, records).items():
                out[target] = ("present" if present else "absent", int(created))
        return out

    def plan(
        self, desired: VaultDesired, observed: dict[str, tuple[str, int]], inventory: list[InventoryItem]
    ) -> list[Action]:
        """One action per changed manifest; payloads hold path, blob id and version, never values. Then the
        engine declarations' actions (declared_plan.py): targets, kinds and spec fingerprints, never values."""
        actions: list[Action] = []
        wanted = {mf.path: mf for mf in desired.manifests}
        engines = declared_plan.ENGINES
        seen = {t: (v[0] == "present", float(v[1])) for t, v in observed.items() if t.startswith(engines)}
        observed = {t: v for t, v in observed.items() if not t.startswith(engines)}
        owned = set(observed) | {i.resource_id for i in inventory
                                 if i.reconciler == NAME and not i.resource_id.startswith(engines)}
        for path, mf in sorted(wanted.items()):
            current = observed.get(path)
            if current is not None and current[0] == mf.blob_id:
                continue
            kind: ActionKind = "create" if current is None else "update"
            actions.append(
                Action(
                    id=f"{NAME}:{path}",
                    reconciler=NAME,
                    kind=kind,
                    target=path,
                    # What changes in the vault's KV, by fingerprint (the blob id: public, it is in git), never
                    # by value: the plan is computed without decrypting anything.
                    summary=f"{kind} secret manifest {path} (blob {mf.blob_id[:12]}) -> "
                            f"{self._kv_path(path, self._validated(path, mf.blob_id))}",
                    change=freeze({"path": path, "blob_id": mf.blob_id}),
                    compensation=freeze({"path": path, "blob_id": current[0] if current else None}),
                )
            )
        for path in sorted(owned - set(wanted)):
            actions.append(
                Action(
                    id=f"{NAME}:{path}",
                    reconciler=NAME,
                    kind="delete",
                    target=path,
                    summary=f"unload secret manifest {path} -> "
                            + (f"soft-delete {self._kv_path(path)}" if self.publisher.prune else
                               f"keep {self._kv_path(path)} (prune = false)"),
                    change=freeze({"path": path}),
                    compensation=freeze({"path": path, "blob_id": observed.get(path, ("",))[0] or None}),
                )
            )
        return actions + declared_plan.plan(desired.engines, inventory, seen, time.time(), self.publisher.prune)

    # 4. apply ------------------------------------------------------------------------------------------
    def _validated(self, path: str, blob_id: str) -> Manifest | None:
        for (p, blob, _), verified in reversed(self._verified.items()):
            if p == path and blob == blob_id and verified.manifest is not None:
                return verified.manifest
        return None

    def _open(self, path: str, blob_id: str, manifest: Manifest) -> dict[str, Any] | None:
        """Decrypt with the daemon's key into the plaintext cache; None when the daemon is not a recipient."""
        try:
            # check_manifest verified both signatures and the signer's trust: decrypt without verifying twice.
            key = envelope.data_key(self.backend, manifest, self.key_source.keyring(), path)
        except NoKeyError:
            return None
        values = envelope.decrypt_values(self.backend, manifest, key, path)
        self.plain.put(path, blob_id, values)
        return values

    def apply(self, action: Action, ctx: ApplyContext) -> Outcome:
        """Load (or unload) one manifest: decrypt it into the bounded plaintext cache, record its version."""
        from reconcilers.errors import ApplyError

        payload = action.payload()
        if "engine" in payload:
            return self._apply_engine(action, payload, ctx)
        path = str(payload["path"])
        with self._lock:
            if ctx.dry_run:
                return Outcome(action.id, True, f"would {action.kind} {path}")
            self._previous[path] = self._store.get(path)
            if action.kind == "delete":
                self._publish(path, None)
                self._store.pop(path, None)
                self.plain.drop(path)
                if path in self._versions:  # the tombstone version stays: re-adding an old file is a replay
                    self._versions[path] = {**self._versions[path], "unloaded": True}
                self._write_versions()
                return Outcome(action.id, True, f"unloaded {path}", inventory=None, removed=True)
            blob_id = str(payload["blob_id"])
            manifest = self._validated(path, blob_id)
            if manifest is None:
                raise ApplyError(
                    "the manifest was not validated in this process",
                    where=path,
                    hint="the daemon re-validates the revision on the next run",
                )
            try:
                values = self._open(path, blob_id, manifest)
            except KeySealedError as err:
                raise self.waiting_on_seal(err, path) from None
            except VaultError as err:
                raise ApplyError(f"cannot decrypt with the daemon's key: {err.what}", where=path,
                                 hint=err.hint or "re-encrypt it with `stratum secret rotate`") from err
            readable = values is not None
            if readable:
                self._publish(path, values, manifest)
            loaded = StoredManifest(blob_id, manifest.meta.version, manifest, readable)
            if not readable:
                self.plain.drop(path)
            self._store[path] = loaded
            self._versions[path] = {"version": loaded.version, "blob_id": loaded.blob_id, "readable": readable}
            self._write_versions()
            state = "loaded" if readable else "verified (the daemon is not a recipient)"
            return Outcome(
                action.id,
                True,
                f"{path} v{loaded.version} {state}",
                inventory={"reconciler": NAME, "resource_id": path, "kind": "secret_manifest",
                           "data": {"path": path, "version": loaded.version, "blob_id": loaded.blob_id}},
            )

    def _apply_engine(self, action: Action, payload: dict[str, Any], ctx: ApplyContext) -> Outcome:
        """One engine declaration on the vault service (declared_apply.py: idempotent, so no compensation).
        While the vault is disabled or sealed the action is done as "waiting" with no inventory change: the run
        goes on (infra and knowledge apply), and the next run plans it again."""
        record, delete = dict(payload["engine"]), bool(payload.get("delete"))
        if ctx.dry_run:
            return Outcome(action.id, True, f"would {action.kind} {action.target}")

        from reconcilers.vault import declared_apply  # the engines' code, loaded when an action runs

        def resolve(reference: str) -> str:
            return self.secrets().resolve(reference, purpose=f"vault {action.target}")

        try:
            message, owned = declared_apply.apply(self.vault_api.service, record, delete, resolve,
                                                  self.publisher.prune)
        except declared_apply.Waiting as err:
            # Owned as "waiting": not planned again while the vault stays closed, planned (and drift) once open.
            return Outcome(action.id, False, f"waiting: {err}", inventory={
                "reconciler": NAME, "resource_id": action.target, "kind": declared_plan.KIND,
                "data": {**record, "waiting": True}})
        if not owned:
            return Outcome(action.id, True, message, inventory=None, removed=True)
        return Outcome(action.id, True, message, inventory={"reconciler": NAME, "resource_id": action.target,
                                                             "kind": declared_plan.KIND, "data": record})

    def compensate(self, action: Action, ctx: ApplyContext) -> None:
        """Put back what the store held for the path before `action`."""
        path = action.target
        with self._lock:
            before = self._previous.pop(path, None)
            self.plain.drop(path)
            if before is None:
                self._store.pop(path, None)
                self._versions.pop(path, None) if action.kind == "create" else None
            else:
                self._store[path] = before
                self._versions[path] = {"version": before.version, "blob_id": before.blob_id,
                                         "readable": before.readable}
            self._write_versions()
            # The vault's KV goes back too: the values before (a new KV version equal to them), or a soft delete
            # of what this action published when there was nothing before.
            values = self._open(path, before.blob_id, before.manifest) if before is not None else None
            if before is None or values is not None:
                self._publish(path, values)

    def drift(self, desired: VaultDesired, observed: dict[str, tuple[str, int]], inventory: list[InventoryItem],
              ) -> list[Problem]:
        """Manifests applied at their committed blob (versions.json says so) that the store does not hold. A
        manifest not applied yet is a planned change, not drift: the plan already shows it. Engine declarations
        the open vault does not hold although applied, or whose action waited (the vault was sealed or off):
        "policy correct", so the daemon's drift check runs the revision again (declared_plan.drifted)."""
        with self._lock:
            applied = {p: v.get("blob_id") for p, v in self._versions.items() if not v.get("unloaded")}
        problems = [
            Problem("applied, but not loaded at the committed version", path=mf.path, reconciler=NAME,
                    hint="the next run loads it again")
            for mf in desired.manifests
            if applied.get(mf.path) == mf.blob_id and observed.get(mf.path, ("",))[0] != mf.blob_id
        ]
        seen = {t: (v[0] == "present", float(v[1])) for t, v in observed.items() if t.startswith(declared_plan.ENGINES)}
        return problems + declared_plan.drifted(desired.engines, inventory, seen)

    # the vault service (reconcilers/vault/service/): policies and KV ----------------------------------------
    def _published(self) -> list[tuple[str, Any]]:
        """(KV path, values) of every readable manifest: what the vault publishes when it opens."""
        out: list[tuple[str, Any]] = []
        for path in self.paths():
            try:
                out.append((self._kv_path(path), self.get(path)))
            except KeyError:
                continue  # not a recipient: nothing to publish
        return out

    def _kv_path(self, path: str, manifest: Manifest | None = None) -> str:
        """Where a manifest's values appear in the vault's KV: its signed `stratum.kv_path`, else kv/ + its path
        under secrets/ without the extension (kvpath.kv_path_of: the rule secret references use too). `manifest`
        is the version at hand; else the one in the store."""
        if manifest is None and path in self._store:
            manifest = self._store[path].manifest
        return kv_path_of(path, manifest.meta.kv_path if manifest is not None else "")

    def _publish(self, path: str, values: Any, manifest: Manifest | None = None) -> None:
        """A manifest's values (None: removed) to its KV path; a vault that cannot take them fails the action."""
        from reconcilers.errors import ApplyError
        from reconcilers.vault.service.errors import ServiceError

        try:
            self.publisher.publish(self._kv_path(path, manifest), values)
        except ServiceError as err:
            raise ApplyError(f"the vault could not store the manifest's values: {'; '.join(err.messages)}",
                             where=path, hint="check the vault's storage backend, then push again") from err

    def on_run_finished(self, record: RunRecord, index: Any) -> None:
        """A succeeded revision's vault policies go in force; its declared mounts and token roles are written."""
        with self._lock:
            declared = self._policies.get(record.revision)
        if record.status == "succeeded" and declared is not None:
            self.publisher.set_policies(dict(declared[0]))
            self.publisher.set_mounts(declared[1])
            self.publisher.set_roles(declared[2])
        # No certificate issued by this process nor kept from an earlier one (certs.json): nothing to forget or
        # renew, and the PKI's modules (cryptography.x509) stay unloaded in a daemon that has none.
        certificates = "certificates" in self.__dict__ or (self.state_dir / "certs.json").exists()
        if record.status == "succeeded" and certificates:
            self.certificates.applied(record.revision)
        # A run that waited on the seal and did not succeed (its waiting budget ran out) is owed a new run once
        # the vault opens; a waiting apply that the unseal let through needs none.
        self._owe_rerun = self._waited_sealed and record.status != "succeeded"
        self._waited_sealed = False
        if certificates:
            self.certificates.arm(self.scheduler)      # the next renewal wakes the daemon for a run

    def http_mounts(self) -> list[HttpMount]:
        """The vault API, on its own listener (reconcilers/vault/service/host.py)."""
        return self.vault_api.mounts()

    def secrets(self) -> SecretsPort:
        """The secrets port other reconcilers use at apply time (reconcilers/vault/secrets_port.py)."""
        from reconcilers.vault.secrets_port import VaultSecrets

        return VaultSecrets(self)

    # the read API (the vault HTTP part builds on it) ----------------------------------------------------
    def paths(self) -> list[str]:
        """The manifests in the store."""
        with self._lock:
            return sorted(self._store)

    def manifest_for_kv(self, kv_path: str) -> str | None:
        """The applied manifest whose KV path is `kv_path` (its signed kv_path, else the default)."""
        with self._lock:
            for path, stored in self._store.items():
                if kv_path_of(path, stored.manifest.meta.kv_path) == kv_path:
                    return path
            return None

    _recipient: str | None = None             # the daemon's recipient fingerprint, once read

    @functools.cached_property
    def fingerprints(self) -> FingerprintKey:
        """The daemon's key for keyed fingerprints of secrets (fingerprints.py)."""
        return FingerprintKey(self.state_dir / "fingerprint.key")

    @functools.cached_property
    def certificates(self) -> CertIssuer:
        """Certificates of certificate references: issued at apply, kept sealed, renewed (pki/certrefs.py)."""
        from reconcilers.vault.pki.certrefs import CertIssuer

        # Not set: the issuer's default (renewal.py's, imported with cryptography.x509 only when one is issued).
        setting = self.vault_api.settings.get("cert_renew_fraction")
        fraction = None if setting is None else float(setting)
        return CertIssuer(self._service, self.state_dir, lambda: self.fingerprints, fraction)

    def recipient_fingerprint(self) -> str | None:
        """The daemon's recipient fingerprint (public; read once), None when it has no key to read."""
        if self._recipient is None:
            if isinstance(self.key_source, FileKeySource | SealedKeySource) and not self.key_source.has_key():
                return None                   # a check only: never make the daemon's key as a side effect
            try:
                self._recipient = self.key_source.recipient().fingerprint
            except (VaultError, OSError):
                return None
        return self._recipient

    def get(self, path: str, key: str | None = None) -> Any:
        """A value by manifest path and dotted key (`db.password`), or the whole mapping when key is None.
        KeyError when absent or when the daemon is not a recipient of that manifest. Decrypts again when the
        bounded plaintext cache let the values go."""
        with self._lock:
            loaded = self._store.get(path)
            if loaded is None or not loaded.readable:
                raise KeyError(path)
            node: Any = self.plain.get(path, loaded.blob_id)
            if node is None:
                node = self._open(path, loaded.blob_id, loaded.manifest)
                if node is None:
                    raise KeyError(path)
            for part in key.split(".") if key else []:
                if isinstance(node, dict) and part in node:
                    node = node[part]
                elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                    node = node[int(part)]
                else:
                    raise KeyError(f"{path}: {key}")
            return node


def _replay(path: str, version: int, before: int, where: str) -> Problem:
    return Problem(
        f"stratum.version {version} is not above {before} ({where}): an older manifest replayed?",
        path=path,
        reconciler=NAME,
        hint="re-save it with `stratum secret edit` (it bumps the version)",
    )


def _digest(value: object) -> str:
    """A stable short digest of loaded rules (their repr is their content: frozen dataclasses)."""
    return hashlib.sha256(repr(value).encode()).hexdigest()[:16]
