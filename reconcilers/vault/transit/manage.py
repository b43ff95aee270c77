"""Transit key management requests: create, read, config and delete a key (the policy fields Vault has), and
the small parsers of request values the other routes share."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from reconcilers.vault.durations import DurationError, parse_duration
from reconcilers.vault.transit import keys as k
from reconcilers.vault.transit import ops
from reconcilers.vault.transit.keys import HYBRID, SIGNING, SYMMETRIC, Key, KeyValueStore, TransitError

Result = tuple[int, dict[str, Any]]


def as_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.lower() in ("1", "true", "yes")
    return bool(value)


def as_int(value: Any, what: str) -> int:
    if isinstance(value, bool):
        raise TransitError(f"{what} must be an integer")
    try:
        return int(value)
    except (TypeError, ValueError) as err:
        raise TransitError(f"{what} must be an integer") from err


def create(name: str, body: Mapping[str, Any], store: KeyValueStore) -> Result:
    key_type = str(body.get("type") or "aes256-gcm96")
    if key_type == "ml-dsa" and str(body.get("parameter_set", "65")) != "65":
        raise TransitError("only parameter_set 65 of ml-dsa is supported")
    if as_bool(body.get("convergent_encryption")):
        raise TransitError("convergent encryption is not supported by this vault")
    with k.WRITE_LOCK:
        existing = k.load(store, name)
        if existing is not None:
            return 200, {"data": describe(existing)}     # as Vault: creating an existing key changes nothing
        key = k.create(name, key_type, derived=as_bool(body.get("derived")),
                       exportable=as_bool(body.get("exportable")),
                       allow_plaintext_backup=as_bool(body.get("allow_plaintext_backup")))
        if body.get("auto_rotate_period") is not None:
            key = replace(key, auto_rotate_period=duration(body["auto_rotate_period"]))
        k.save(store, key)
    return 200, {"data": describe(key)}


def duration(value: Any) -> int:
    """Seconds of `3600`, "3600", "90m", "24h", "7d", "1h30m" (reconcilers/vault/durations.py)."""
    try:
        return parse_duration(value, "auto_rotate_period")
    except DurationError as err:
        raise TransitError(f"{err} (such as 24h)") from None


def describe(key: Key) -> dict[str, Any]:
    versions: dict[str, Any] = {}
    for n, v in sorted(key.versions.items()):
        if key.type in SYMMETRIC:
            versions[str(n)] = int(v.created)
        else:
            versions[str(n)] = {"creation_time": dt.datetime.fromtimestamp(v.created, dt.UTC).isoformat(),
                                "name": key.type, "public_key": ops.public_text(key, v)}
    out: dict[str, Any] = {
        "name": key.name, "type": key.type, "keys": versions, "latest_version": key.latest_version,
        "min_available_version": 0, "min_decryption_version": key.min_decryption_version,
        "min_encryption_version": key.min_encryption_version, "deletion_allowed": key.deletion_allowed,
        "derived": key.derived, "exportable": key.exportable, "allow_plaintext_backup": key.allow_plaintext_backup,
        "supports_encryption": key.type in (*SYMMETRIC, HYBRID), "supports_decryption": key.type in (*SYMMETRIC,
                                                                                                      HYBRID),
        "supports_derivation": key.type in SYMMETRIC, "supports_signing": key.type in SIGNING,
        "auto_rotate_period": key.auto_rotate_period, "imported_key": False}
    if key.derived:
        out["kdf"] = "hkdf_sha256"
    return out


def delete(name: str, store: KeyValueStore) -> Result:
    with k.WRITE_LOCK:
        key = k.need(store, name)
        if not key.deletion_allowed:
            raise TransitError("deletion is not allowed for this key")
        store.delete(k.PREFIX + key.name)
    return 204, {}


def config(name: str, body: Mapping[str, Any], store: KeyValueStore) -> Result:
    with k.WRITE_LOCK:
        key = k.need(store, name)
        changes: dict[str, Any] = {}
        if "min_decryption_version" in body:
            n = as_int(body["min_decryption_version"], "min_decryption_version")
            if n > key.latest_version:
                raise TransitError(f"cannot set min decryption version of {n}, latest key version is "
                                   f"{key.latest_version}")
            changes["min_decryption_version"] = max(1, n)
        if "min_encryption_version" in body:
            n = as_int(body["min_encryption_version"], "min_encryption_version")
            if n < 0 or n > key.latest_version:
                raise TransitError(f"cannot set min encryption version of {n}, latest key version is "
                                   f"{key.latest_version}")
            changes["min_encryption_version"] = n
        if "deletion_allowed" in body:
            changes["deletion_allowed"] = as_bool(body["deletion_allowed"])
        for flag in ("exportable", "allow_plaintext_backup"):
            if flag in body:
                if getattr(key, flag) and not as_bool(body[flag]):
                    raise TransitError(f"{flag} key setting cannot be disabled")
                changes[flag] = getattr(key, flag) or as_bool(body[flag])
        if "auto_rotate_period" in body:
            changes["auto_rotate_period"] = duration(body["auto_rotate_period"])
        key = replace(key, **changes)
        enc, dec = key.min_encryption_version, key.min_decryption_version
        if enc and enc < dec:
            raise TransitError("min encryption version should not be less than min decryption version")
        k.save(store, key)
    return 200, {"data": describe(key)}
