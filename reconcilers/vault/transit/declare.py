"""Transit keys declared in the repo (`vault/transit/*.ncl`, contract `TransitKeys` in nickel/vault.ncl): what
changes a store needs to match them. Names and policy come from the repo; key material is made here, kept in
the store, and never appears in a change, a plan or a record.

`plan(declared, store, now)` is pure but for reading the store: create a missing key, bring its config to the
declared one (exportable only ever turns on), rotate a key whose latest version is older than its
`auto_rotate_period`. A declared type that differs from the stored key's is a problem, not a change (a key's
type never changes). Keys in the store that the repo does not declare are left alone: deleting key material
is a person's decision (`DELETE /v1/transit/keys/<k>` with deletion_allowed).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from reconcilers.vault.transit import keys as k
from reconcilers.vault.transit.manage import duration


@dataclass(frozen=True, slots=True)
class Declared:
    """One declared key (the evaluated TransitKey record)."""

    name: str
    type: str = "aes256-gcm96"
    derived: bool = False
    exportable: bool = False
    deletion_allowed: bool = False
    min_decryption_version: int = 0
    auto_rotate_period: int = 0                  # seconds; 0 never


@dataclass(frozen=True, slots=True)
class Change:
    """What one key needs: `create`, `config` (fields to set) or `rotate`; `summary` says it for a plan."""

    name: str
    kind: str
    fields: Mapping[str, Any]
    summary: str


def declared_from(value: Mapping[str, Any]) -> tuple[dict[str, Declared], list[str]]:
    """The declared keys of an evaluated `TransitKeys` value, and the problems (bad names, bad periods)."""
    out: dict[str, Declared] = {}
    problems: list[str] = []
    for name, raw in sorted(dict(value.get("keys", {})).items()):
        try:
            k.check_name(name)
            period = duration(raw.get("auto_rotate_period") or "0")
        except k.TransitError as err:
            problems.append(f"transit key {name[:80]!r}: {err.message}")
            continue
        out[name] = Declared(name, str(raw.get("type", "aes256-gcm96")), bool(raw.get("derived", False)),
                             bool(raw.get("exportable", False)), bool(raw.get("deletion_allowed", False)),
                             int(raw.get("min_decryption_version", 0)), period)
    return out, problems


def plan(declared: Mapping[str, Declared], store: k.KeyValueStore, now: float) -> tuple[list[Change], list[str]]:
    """The changes that bring `store` to `declared`, and the problems that no change can fix."""
    changes: list[Change] = []
    problems: list[str] = []
    for name, want in sorted(declared.items()):
        have = k.load(store, name)
        if have is None:
            changes.append(Change(name, "create", {"type": want.type}, f"create transit key {name} ({want.type})"))
            continue                              # created with the declared policy (apply)
        if have.type != want.type or have.derived != want.derived:
            problems.append(f"transit key {name} is a {'derived ' if have.derived else ''}{have.type} key in the "
                            f"vault; the repo declares {'derived ' if want.derived else ''}{want.type}: a key's "
                            "type never changes (declare a new key and move to it)")
            continue
        fields: dict[str, Any] = {}
        if want.exportable and not have.exportable:
            fields["exportable"] = True
        if want.deletion_allowed != have.deletion_allowed:
            fields["deletion_allowed"] = want.deletion_allowed
        if want.min_decryption_version and want.min_decryption_version != have.min_decryption_version:
            fields["min_decryption_version"] = want.min_decryption_version
        if want.auto_rotate_period != have.auto_rotate_period:
            fields["auto_rotate_period"] = want.auto_rotate_period
        if fields:
            changes.append(Change(name, "config", fields, f"configure transit key {name}: "
                                  + ", ".join(f"{f}={v}" for f, v in sorted(fields.items()))))
        due = want.auto_rotate_period and now - have.versions[have.latest_version].created >= want.auto_rotate_period
        if due:
            changes.append(Change(name, "rotate", {}, f"rotate transit key {name} (v{have.latest_version} is older "
                                  f"than {want.auto_rotate_period} s)"))
    return changes, problems


def apply(change: Change, declared: Mapping[str, Declared], store: k.KeyValueStore) -> str:
    """Carry out one change; a short message (never key material)."""
    with k.WRITE_LOCK:
        key = k.load(store, change.name)
        if change.kind == "create":
            if key is not None:
                return f"transit key {change.name} already exists"
            want = declared[change.name]
            key = k.create(change.name, want.type, derived=want.derived, exportable=want.exportable)
            key = replace(key, deletion_allowed=want.deletion_allowed, auto_rotate_period=want.auto_rotate_period)
            k.save(store, key)
            return f"created transit key {change.name} v1"
        if key is None:
            raise k.TransitError(f"transit key {change.name} is gone", 404)
        if change.kind == "rotate":
            key = k.rotated(key)
            k.save(store, key)
            return f"rotated transit key {change.name} to v{key.latest_version}"
        fields = dict(change.fields)
        if fields.get("min_decryption_version", 0) > key.latest_version:
            raise k.TransitError(f"transit key {change.name}: min_decryption_version "
                                 f"{fields['min_decryption_version']} is above its latest version {key.latest_version}")
        key = replace(key, **fields)
        k.save(store, key)
        return f"configured transit key {change.name}"
