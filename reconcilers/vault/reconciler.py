"""The daemon side: verify changed manifests on each commit, decrypt them with the daemon's key, and hold the
plaintext in memory only.

 1. load      manifests (not decrypted) and the rules, from the commit
 2. validate  the checks of check.py for changed blobs only (blob-id cache), replay against the versions this
              daemon applied (kept on disk: path -> version, never values), then decrypt with the daemon's key
 3. plan      one action per changed manifest (create/update/delete); payloads carry ids and versions only
 4. apply     move the decrypted values into the in-memory store
A manifest the daemon is not a recipient of is verified but not loaded: teams may keep secrets from it.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daemon.policy import PolicyResource

from reconcilers.base import (
    Action,
    ActionKind,
    ApplyContext,
    InventoryItem,
    Outcome,
    Problem,
    ReconcilerEnv,
    freeze,
)
from reconcilers.vault import check, envelope
from reconcilers.vault.backends import DEFAULT, Backend, get_backend
from reconcilers.vault.errors import NoKeyError, VaultError
from reconcilers.vault.keysource import FileKeySource, KeySource
from reconcilers.vault.rules import RULES_PATH, Rules, close_evaluator, load_snapshot

if TYPE_CHECKING:
    from daemon.nickel import Evaluator
    from daemon.source import Snapshot

NAME = "vault"


@dataclass(frozen=True, slots=True)
class ManifestFile:
    """A manifest as committed: path, blob id, text."""

    path: str
    blob_id: str
    text: str


@dataclass(frozen=True, slots=True)
class VaultDesired:
    """What a commit asks for: its manifests and rules (or the problems loading them)."""

    revision: str
    manifests: tuple[ManifestFile, ...]
    rules: Rules | None
    problems: tuple[Problem, ...] = ()


@dataclass(frozen=True, slots=True, repr=False)
class Loaded:
    """One manifest in the store: version and blob, and its values (never in repr)."""

    blob_id: str
    version: int
    values: dict[str, Any] | None  # None: verified, but the daemon is not a recipient

    def __repr__(self) -> str:
        return f"Loaded(version={self.version}, blob={self.blob_id[:12]}, loaded={self.values is not None})"


class VaultReconciler:
    """The vault reconciler (see the module docstring)."""

    name = NAME

    def __init__(
        self, env: ReconcilerEnv, key_source: KeySource | None = None, evaluator: Evaluator | None = None
    ) -> None:
        settings: dict[str, Any] = dict(env.settings.get("vault", {}))
        repo: dict[str, Any] = dict(env.repo_settings.get("vault", {}))
        self.state_dir = env.data_dir / "vault"
        key_file = Path(settings.get("key_file") or self.state_dir / "daemon.key")
        self.backend_name = str(settings.get("backend") or repo.get("backend") or DEFAULT)
        self.backend: Backend = get_backend(self.backend_name)
        self.rules_path = str(repo.get("rules") or RULES_PATH)
        self.key_source: KeySource = key_source or FileKeySource(key_file, backend=self.backend_name)
        self._evaluator = evaluator
        self._own_evaluator = False
        self._lock = threading.RLock()
        self._store: dict[str, Loaded] = {}
        self._verified: dict[tuple[str, int], tuple[Loaded | None, tuple[Problem, ...]]] = {}
        self._previous: dict[str, Loaded | None] = {}  # path -> before apply
        self._versions_file = self.state_dir / "versions.json"
        self._versions: dict[str, dict[str, Any]] = self._read_versions()
        self.stats = {"verified": 0, "cache_hits": 0}

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
        """What change control authorizes: each manifest (kind secret) and the rules file; the digest is the
        blob id, so re-encrypting counts as a change while the plaintext stays unknown."""
        out = [PolicyResource(self.name, m.path, "secret", m.path, "vault", {}, m.blob_id[:16], m.path, 1)
               for m in desired.manifests]
        if desired.rules is not None:
            out.append(PolicyResource(self.name, RULES_PATH, "secret_rules", RULES_PATH, "vault", {},
                                      _digest(desired.rules), RULES_PATH, 1))
        return out

    def close(self) -> None:
        """Stop the Nickel worker this reconciler started (an injected evaluator is the caller's to close)."""
        if self._evaluator is not None and self._own_evaluator:
            close_evaluator(self._evaluator)
            self._evaluator = None

    def _nickel(self) -> Evaluator:
        if self._evaluator is None:
            from daemon.nickel import Evaluator

            self._evaluator = Evaluator(self.state_dir / "nickel")
            self._own_evaluator = True
        return self._evaluator

    # 1. load --------------------------------------------------------------------------------------
    def load(self, snap: Snapshot) -> VaultDesired:
        """The commit's manifests (text, not decrypted) and its rules."""
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
            # The same loader `stratum secret` uses on the staged tree (rules.load_repo).
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
        return VaultDesired(snap.revision, tuple(files), rules, tuple(problems))

    # 2. validate ------------------------------------------------------------------------------------
    def _verify(
        self, mf: ManifestFile, rules: Rules | None, rules_hash: int
    ) -> tuple[Loaded | None, tuple[Problem, ...]]:
        # Trust depends on the rules, so the cache key is (blob id, rules).
        cached = self._verified.get((mf.blob_id, rules_hash))
        if cached is not None:
            self.stats["cache_hits"] += 1
            return cached
        self.stats["verified"] += 1
        manifest, problems = check.check_manifest(self.backend, mf.text, mf.path, rules)
        loaded: Loaded | None = None
        if manifest is not None and not problems:
            try:
                # check_manifest verified both signatures and the signer's trust: decrypt without verifying twice.
                key = envelope.data_key(self.backend, manifest, self.key_source.keyring(), mf.path)
                values = envelope.decrypt_values(self.backend, manifest, key, mf.path)
                loaded = Loaded(mf.blob_id, manifest.meta.version, values)
            except NoKeyError:
                loaded = Loaded(mf.blob_id, manifest.meta.version, None)
            except VaultError as err:
                problems.append(check._problem(err, mf.path))
        result = (loaded, tuple(problems))
        if len(self._verified) > 10_000:
            self._verified.clear()
        self._verified[(mf.blob_id, rules_hash)] = result
        return result

    def validate(self, desired: VaultDesired) -> list[Problem]:
        """Every problem of the commit's manifests; replays against the versions this daemon applied."""
        with self._lock:
            rules_hash = hash(desired.rules)
            problems = list(desired.problems)
            for mf in desired.manifests:
                loaded, found = self._verify(mf, desired.rules, rules_hash)
                problems += found
                seen = self._versions.get(mf.path)
                if (
                    loaded is not None
                    and seen is not None
                    and seen.get("blob_id") != mf.blob_id
                    and loaded.version <= int(seen["version"])
                ):
                    problems.append(
                        Problem(
                            f"stratum.version {loaded.version} is not above the applied {seen['version']}: "
                            "an older "
                            "manifest replayed?",
                            path=mf.path,
                            reconciler=NAME,
                            hint="re-save it with `stratum secret edit` (it bumps the version)",
                        )
                    )
            return problems

    # 3. observe and plan ------------------------------------------------------------------------------
    def observe(self, desired: VaultDesired, inventory: list[InventoryItem]) -> dict[str, tuple[str, int]]:
        """What the store holds: path -> (blob id, version)."""
        with self._lock:
            return {p: (v.blob_id, v.version) for p, v in self._store.items()}

    def plan(
        self, desired: VaultDesired, observed: dict[str, tuple[str, int]], inventory: list[InventoryItem]
    ) -> list[Action]:
        """One action per changed manifest; payloads hold path, blob id and version, never values."""
        actions: list[Action] = []
        wanted = {mf.path: mf for mf in desired.manifests}
        owned = set(observed) | {i.resource_id for i in inventory if i.reconciler == NAME}
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
                    summary=f"{kind} secret manifest {path}",
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
                    summary=f"unload secret manifest {path}",
                    change=freeze({"path": path}),
                    compensation=freeze({"path": path, "blob_id": observed.get(path, ("",))[0] or None}),
                )
            )
        return actions

    # 4. apply ------------------------------------------------------------------------------------------
    def _validated(self, blob_id: str) -> Loaded | None:
        for (blob, _), (loaded, problems) in self._verified.items():
            if blob == blob_id and loaded is not None and not problems:
                return loaded
        return None

    def apply(self, action: Action, ctx: ApplyContext) -> Outcome:
        """Load (or unload) one manifest's values into memory and record its version."""
        from daemon.errors import ApplyError

        payload = action.payload()
        path = str(payload["path"])
        with self._lock:
            if ctx.dry_run:
                return Outcome(action.id, True, f"would {action.kind} {path}")
            self._previous[path] = self._store.get(path)
            if action.kind == "delete":
                self._store.pop(path, None)
                self._write_versions()  # the tombstone version stays: re-adding an old file is a replay
                return Outcome(action.id, True, f"unloaded {path}", inventory=None, removed=True)
            loaded = self._validated(str(payload["blob_id"]))
            if loaded is None:
                raise ApplyError(
                    "the manifest was not validated in this process",
                    where=path,
                    hint="the daemon re-validates the revision on the next run",
                )
            self._store[path] = loaded
            self._versions[path] = {"version": loaded.version, "blob_id": loaded.blob_id}
            self._write_versions()
            state = "loaded" if loaded.values is not None else "verified (the daemon is not a recipient)"
            return Outcome(
                action.id,
                True,
                f"{path} v{loaded.version} {state}",
                inventory={"path": path, "version": loaded.version, "blob_id": loaded.blob_id},
            )

    def compensate(self, action: Action, ctx: ApplyContext) -> None:
        """Put back what the store held for the path before `action`."""
        path = action.target
        with self._lock:
            before = self._previous.pop(path, None)
            if before is None:
                self._store.pop(path, None)
                self._versions.pop(path, None) if action.kind == "create" else None
            else:
                self._store[path] = before
                self._versions[path] = {"version": before.version, "blob_id": before.blob_id}
            self._write_versions()

    def drift(self, desired: VaultDesired, observed: dict[str, tuple[str, int]]) -> list[Problem]:
        """Manifests of the commit that the store does not hold at their committed blob."""
        return [
            Problem("not loaded at the committed version", path=mf.path, reconciler=NAME)
            for mf in desired.manifests
            if observed.get(mf.path, ("",))[0] != mf.blob_id
        ]

    # the read API (the vault HTTP part builds on it) ----------------------------------------------------
    def paths(self) -> list[str]:
        """The manifests in the store."""
        with self._lock:
            return sorted(self._store)

    def get(self, path: str, key: str | None = None) -> Any:
        """A value by manifest path and dotted key (`db.password`), or the whole mapping when key is None.
        KeyError when absent or when the daemon is not a recipient of that manifest."""
        with self._lock:
            loaded = self._store.get(path)
            if loaded is None or loaded.values is None:
                raise KeyError(path)
            node: Any = loaded.values
            for part in key.split(".") if key else []:
                if isinstance(node, dict) and part in node:
                    node = node[part]
                elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                    node = node[int(part)]
                else:
                    raise KeyError(f"{path}: {key}")
            return node


def _digest(value: object) -> str:
    """A stable short digest of loaded rules (their repr is their content: frozen dataclasses)."""
    return hashlib.sha256(repr(value).encode()).hexdigest()[:16]
