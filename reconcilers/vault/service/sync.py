"""What the vault reconciler hands the vault service from a revision: its Cedar policies, and each loaded
manifest's values at its KV path.

  policies   `vault/policies/*.cedar` of the revision, checked against the vault schema at validate (a bad
             policy rejects the revision, located), put in force once the revision's run succeeded
  kv         a manifest applied -> a new KV v2 version at its KV path when its values changed; a manifest
             removed -> its KV secret soft-deleted, unless the repo's vault settings say `prune = false`.
             While the vault is sealed nothing is written; everything is published again when it opens.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from reconcilers.base import Problem

if TYPE_CHECKING:
    from reconcilers.ports import Snapshot

POLICY_DIR = "vault/policies"
MOUNTS_FILE = "vault/mounts.ncl"
MOUNTS_CONTRACT = '(import "vault.ncl").Mounts'
Mount = tuple[str, str, int, str]          # (path "legacy/", type, kv version, description)
ROLES_FILE = "vault/token_roles.ncl"
ROLES_CONTRACT = '(import "vault.ncl").TokenRoles'
Role = tuple[str, str]                     # (name, the role's settings as canonical JSON)
MAX_POLICY_BYTES = 256 * 1024


def load_policies(snap: Snapshot) -> tuple[tuple[tuple[str, str], ...], list[Problem]]:
    """(path, text) of every policy file of the revision, and the problems of those that do not check."""
    files: dict[str, str] = {}
    problems: list[Problem] = []
    for entry in snap.entries(POLICY_DIR, (".cedar",)):
        try:
            files[entry.path] = snap.text(entry, limit=MAX_POLICY_BYTES)
        except Exception as err:  # noqa: BLE001 an unreadable or oversized file is its own located problem
            problems.append(Problem(str(getattr(err, "what", err)), path=entry.path, reconciler="vault",
                                    hint=f"vault policies are UTF-8 Cedar text under {MAX_POLICY_BYTES} bytes"))
    if not files:
        return (), problems
    from reconcilers.vault.service import policy  # Cedar is loaded only for repos that have vault policies

    for found in policy.check(files):
        problems.append(Problem(f"vault policy {found.message}", path=found.file, reconciler="vault",
                                hint="see the schema in reconcilers/vault/service/policy.py (principal "
                                     "Vault::Token in Vault::Group::\"<policy>\", resource Vault::Path)"))
    return tuple(sorted(files.items())), problems


def load_mounts(snap: Snapshot, evaluator: Any) -> tuple[tuple[Mount, ...], list[Problem]]:
    """The engines `vault/mounts.ncl` declares (checked by the Nickel contract and the mount path rules)."""
    if snap.entry(MOUNTS_FILE) is None:
        return (), []
    if evaluator is None:
        return (), [Problem("no Nickel evaluator to read the vault mounts", path=MOUNTS_FILE, reconciler="vault")]
    from reconcilers.vault.service.errors import ServiceError
    from reconcilers.vault.service.mounts import check_mount_path

    result = evaluator.evaluate(snap, [MOUNTS_FILE], MOUNTS_CONTRACT)
    problems = list(result.problems)
    value = result.values.get(MOUNTS_FILE)
    out: list[Mount] = []
    for name, spec in sorted((value or {}).items()):
        try:
            path = check_mount_path(name)
        except ServiceError as err:
            problems.append(Problem(f"vault mount {name!r}: {'; '.join(err.messages)}", path=MOUNTS_FILE,
                                    reconciler="vault", hint="name it like a path: letters, digits, - _ /"))
            continue
        version = int(spec.get("version", 2))
        if spec.get("type") == "kv" and version not in (1, 2):
            problems.append(Problem(f"vault mount {name!r}: kv version {version} (1 or 2)", path=MOUNTS_FILE,
                                    reconciler="vault", hint="version = 1 or version = 2"))
            continue
        out.append((path, str(spec.get("type")), version if spec.get("type") == "kv" else 0,
                    str(spec.get("description", ""))))
    return tuple(out), problems


def load_roles(snap: Snapshot, evaluator: Any) -> tuple[tuple[Role, ...], list[Problem]]:
    """The token roles `vault/token_roles.ncl` declares, each checked as the API would check it."""
    if snap.entry(ROLES_FILE) is None:
        return (), []
    if evaluator is None:
        return (), [Problem("no Nickel evaluator to read the token roles", path=ROLES_FILE, reconciler="vault")]
    from reconcilers.vault.service.errors import ServiceError
    from reconcilers.vault.service.roles import normalize
    from reconcilers.vault.service.storage.base import check_path

    result = evaluator.evaluate(snap, [ROLES_FILE], ROLES_CONTRACT)
    problems = list(result.problems)
    out: list[Role] = []
    for name, spec in sorted((result.values.get(ROLES_FILE) or {}).items()):
        try:
            check_path(name)
            if "/" in name:
                raise ServiceError("a role name has no '/'")
            out.append((name, json.dumps(normalize(dict(spec)), sort_keys=True)))
        except ServiceError as err:
            problems.append(Problem(f"token role {name!r}: {'; '.join(err.messages)}", path=ROLES_FILE,
                                    reconciler="vault", hint="durations look like 30m, 1h or 3600"))
    return tuple(out), problems


def kv_values(values: Any) -> dict[str, Any] | None:
    """A manifest's values as a KV secret (a JSON object of JSON values), or None when they are not a mapping."""
    if not isinstance(values, dict):
        return None
    return dict(json.loads(json.dumps(values, default=str)))


def publish_all(reconcile: Callable[[str, dict[str, Any] | None], str],
                current: Callable[[], list[tuple[str, Any]]]) -> None:
    """Publish every readable manifest (called when the vault opens)."""
    for kv_path, values in current():
        data = kv_values(values)
        if data is not None:
            reconcile(kv_path, data)
