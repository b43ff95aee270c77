"""The infra reconciler's side of secret references at load (locating them), observe (keyed fingerprints of
what the host has) and apply (values in, fingerprints recorded). See secretrefs.py for the spec fields.

What was applied is remembered as (spec hash, keyed fingerprint of the written bytes) per resource in
<data>/infra/secret-applied.json: a plan compares the host's keyed fingerprint with it, because the expected
bytes cannot be known without the value, and the value is only ever resolved at apply.

A reference that cannot be resolved until someone acts outside the run (a certificate while the vault is off,
sealed or without its role: a WaitingError with `defer`) ends its action as a `waiting` outcome before anything
is written. `Waiting` remembers it for the run's inventory: the entry records the spec hash WAITING_HASH (never
a real one), so no later plan takes the resource as applied, a drift check does not loop on it, and the plan
says why it waited (`note_waiting`).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from reconcilers.base import Action, InventoryItem, Problem, freeze
from reconcilers.errors import ApplyError, InputError, StratumError, WaitingError
from reconcilers.infra import secretrefs as refs
from reconcilers.infra.model import InfraDesired, Resource
from reconcilers.ports import SecretLocation, SecretsPort, Snapshot

MAX_HOST_READ = 4 * 1024 * 1024
WAITING_HASH = "waiting"           # the spec hash of an inventory entry whose apply waited (no real hash is this)
NO_VAULT = "no-vault"              # the version of a certificate reference where no vault reconciler runs
MAX_WAIT_NOTE = 400                # characters of the reason kept in the inventory and shown by plans
SECRETS, CREDENTIALS = refs.SECRETS, refs.CREDENTIALS
redact = refs.redact


def uses_secrets(r: Resource) -> bool:
    """True when the resource's spec references a secret."""
    return refs.SECRETS in r.fields


def credential_path(runtime_dir: Path, unit: str, name: str) -> Path:
    """Where a unit's credential file lives (LoadCredential= reads it when the unit starts)."""
    return runtime_dir / "credentials" / unit / name


def with_credentials(content: str, unit: str, creds: Mapping[str, str], runtime_dir: Path) -> str:
    """The unit text with a `LoadCredential=<name>:<file>` line per credential in its [Service] section."""
    lines = [f"LoadCredential={n}:{credential_path(runtime_dir, unit, n)}" for n in sorted(creds)]
    out = content.splitlines()
    for i, line in enumerate(out):
        if line.strip() == "[Service]":
            out[i + 1:i + 1] = lines
            return "\n".join(out) + "\n"
    return content.rstrip("\n") + ("\n\n" if content.strip() else "") + "[Service]\n" + "\n".join(lines) + "\n"


def locate_all(snap: Snapshot, desired: InfraDesired, port: SecretsPort | None, runtime_dir: Path,
               ) -> InfraDesired:
    """Each resource using secrets with `secret_versions` and `after` filled in from the revision; a reference
    that names nothing, or that the daemon cannot decrypt, is a problem located at the resource."""
    users = [r for r in desired.resources.values() if uses_secrets(r)]
    if not users:
        return desired
    problems = list(desired.problems)
    resources = dict(desired.resources)
    seen: dict[str, SecretLocation | StratumError] = {}
    for r in users:
        spec: dict[str, Any] = dict(r.fields)
        versions: dict[str, str] = {}
        after: set[str] = set()
        failed = False
        for ref in sorted(set(spec[refs.SECRETS].values())):
            found = seen.get(ref)
            if found is None:
                try:
                    if port is None:
                        raise StratumError("secret references need the vault reconciler, which does not run here",
                                           hint="enable the vault reconciler")
                    found = port.locate(snap, ref)
                except InputError as err:
                    found = err
                except StratumError as err:
                    # No vault reconciler runs (the reference itself is fine: that would be an InputError). A
                    # certificate then waits at apply like one whose vault is off; a secret value cannot.
                    found = SecretLocation(ref, "", "", NO_VAULT) if ref.startswith(refs.CERT_PREFIX) else err
                seen[ref] = found
            if isinstance(found, StratumError):
                msg = found.what if ref in found.what else f"secret {ref}: {found.what}"
                problems.append(Problem(f"resource {r.id}: {msg}", r.source, r.line, reconciler="infra",
                                        hint=found.hint))
                failed = True
                continue
            versions[ref] = found.fingerprint
            if found.action_id:
                after.add(found.action_id)
        if failed:
            continue
        spec[refs.VERSIONS] = versions
        spec[refs.AFTER] = sorted(after)
        if r.kind == "systemd_unit" and spec.get(refs.CREDENTIALS):
            spec["content"] = with_credentials(str(spec["content"]), str(spec["name"]), spec[refs.CREDENTIALS],
                                               runtime_dir)
        resources[r.id] = replace(r, spec=freeze(spec))
    return InfraDesired(resources=resources, problems=tuple(problems))


@dataclass(frozen=True, slots=True)
class Resolved:
    """A spec with values in (for the provider: never stored), and what to fingerprint and redact with."""

    spec: dict[str, Any]
    values: dict[str, str]                # token -> value
    refs: dict[str, str]                  # token -> reference

    def __repr__(self) -> str:
        return f"Resolved({sorted(self.refs.values())})"


def resolve(port: SecretsPort | None, rid: str, spec: Mapping[str, Any]) -> Resolved:
    """Resolve the resource's references (audited by the port) and put the values in its spec."""
    tokens: dict[str, str] = dict(spec.get(refs.SECRETS, {}))
    if NO_VAULT in dict(spec.get(refs.VERSIONS, {})).values():
        raise WaitingError(f"resource {rid}: its certificate comes from the vault, which does not run here",
                           where=f"infra:{rid}", hint="enable the vault reconciler and its service ([vault] "
                           "enabled = true in stratumd.toml); the file is left as it is", defer=True)
    if port is None:
        raise ApplyError(f"resource {rid} uses secrets but no secrets port is available", where=f"infra:{rid}",
                         hint="enable the vault reconciler")
    values = {t: port.resolve(ref, purpose=f"infra:{rid}") for t, ref in sorted(tokens.items())}
    out = {k: v for k, v in spec.items() if k not in (refs.SECRETS, refs.VERSIONS, refs.AFTER)}
    if "content" in out:
        out["content"] = refs.substitute(str(out["content"]), values)
    if "env" in out:
        out["env"] = {k: refs.substitute(str(v), values) for k, v in out["env"].items()}
    if "user_data" in out:
        out["user_data"] = refs.substitute(str(out["user_data"]), values)
    if refs.CREDENTIALS in out:
        out[refs.CREDENTIALS] = {k: refs.substitute(str(v), values) for k, v in out[refs.CREDENTIALS].items()}
    return Resolved(out, values, tokens)


def write_credentials(runtime_dir: Path, unit: str, creds: Mapping[str, str]) -> None:
    """Each credential as a 0600 file in a 0700 folder of the runtime directory (atomic replace)."""
    folder = runtime_dir / "credentials" / unit
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(folder, 0o700)
    for name, value in creds.items():
        tmp = folder / f".{name}.{os.urandom(4).hex()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, value.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, folder / name)


def remove_credentials(runtime_dir: Path, unit: str) -> None:
    """Remove a removed unit's credential files (their folder holds nothing else of anyone's)."""
    folder = runtime_dir / "credentials" / unit
    if not unit or unit in (".", "..") or not folder.is_dir() or folder.is_symlink():
        return
    for entry in folder.iterdir():
        if entry.is_file() and not entry.is_symlink():
            entry.unlink()
    try:
        folder.rmdir()
    except OSError:
        pass                                  # something else in there: left for a person to look at


def host_bytes(path: str, runtime_dir: Path, r_spec: Mapping[str, Any]) -> bytes | None:
    """What a secret-bearing file or unit put on the host (its file, then its credential files), or None."""
    parts: list[bytes] = []
    try:
        with open(path, "rb") as fh:
            parts.append(fh.read(MAX_HOST_READ))
        for name in sorted(r_spec.get(refs.CREDENTIALS, {})):
            with open(credential_path(runtime_dir, str(r_spec["name"]), name), "rb") as fh:
                parts.append(b"\x00cred\x00" + name.encode() + b"\x00" + fh.read(MAX_HOST_READ))
    except OSError:
        return None
    return b"".join(parts)


def written_bytes(spec: Mapping[str, Any]) -> bytes:
    """The bytes `host_bytes` reads back after a resolved spec was applied."""
    out = [str(spec["content"]).encode()]
    for name, value in sorted(spec.get(refs.CREDENTIALS, {}).items()):
        out.append(b"\x00cred\x00" + name.encode() + b"\x00" + str(value).encode())
    return b"".join(out)


class AppliedMacs:
    """rid -> (spec hash, keyed fingerprint of the bytes written), on disk (no values, no plain hashes)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        try:
            self._data: dict[str, list[str]] = json.loads(path.read_text())
        except (OSError, ValueError):
            self._data = {}

    def expected(self, rid: str, spec_hash: str) -> str | None:
        """The fingerprint recorded when this spec of `rid` was applied, else None."""
        with self._lock:
            got = self._data.get(rid)
        return got[1] if got and got[0] == spec_hash else None

    def holds(self, rid: str) -> bool:
        """True when `rid` was last applied with secrets (what the host has may hold a value)."""
        with self._lock:
            return rid in self._data

    def record(self, rid: str, spec_hash: str, mac: str | None) -> None:
        """Remember (or with None forget) what was applied."""
        with self._lock:
            if mac is None:
                if self._data.pop(rid, None) is None:
                    return
            else:
                self._data[rid] = [spec_hash, mac]
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.{os.urandom(4).hex()}.tmp")
            tmp.write_text(json.dumps(self._data, sort_keys=True))
            os.replace(tmp, self.path)


def waiting_message(err: WaitingError) -> str:
    """The one line a waiting outcome, its inventory entry and later plans show (names and reasons, no value)."""
    text = f"{err.what} ({err.hint})" if err.hint else err.what
    return text[:MAX_WAIT_NOTE]


class Waiting:
    """rid -> (spec hash, why) of the resources whose apply waited in this process; the run's inventory
    (`entry`) marks them, and a later apply of the resource clears them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._data: dict[str, tuple[str, str]] = {}

    def mark(self, rid: str, spec_hash: str, why: str) -> None:
        """The apply of `rid` at `spec_hash` waited for `why`."""
        with self._lock:
            self._data[rid] = (spec_hash, why)

    def clear(self, rid: str) -> None:
        """`rid` was applied (or removed)."""
        with self._lock:
            self._data.pop(rid, None)

    def entry(self, r: Resource) -> str:
        """The inventory data of `r`: its own, or, when its apply at this spec waited, one that says so."""
        with self._lock:
            found = self._data.get(r.id)
        data = r.inventory_data()
        if found is None or found[0] != r.spec_hash:
            return data
        return freeze({**json.loads(data), "spec_hash": WAITING_HASH, "waiting": found[1]})


def note_waiting(actions: list[Action], inventory: list[InventoryItem], reconciler: str) -> list[Action]:
    """`actions` with the reason appended to the summary of each whose resource waited at its last apply."""
    why: dict[str, str] = {}
    for item in inventory:
        if item.reconciler == reconciler and f'"spec_hash":"{WAITING_HASH}"' in item.data:
            why[item.resource_id] = str(json.loads(item.data).get("waiting", ""))
    if not why:
        return actions
    return [replace(a, summary=f"{a.summary} [waited at the last run: {why[a.target]}]")
            if a.target in why and a.kind != "delete" else a for a in actions]
