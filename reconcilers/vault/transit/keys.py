"""Named, versioned transit keys: their types, their material, their policy, and how they are stored.

A key is one JSON document at `policy/<name>` in the engine's store (which the vault's barrier encrypts):
policy fields plus one entry per version with that version's key material and a separate HMAC key, as Vault
keeps them. Types:

    aes256-gcm96        32-byte key; encrypt/decrypt, associated data, derivation (HKDF-SHA256 by context)
    chacha20-poly1305   32-byte key; the same operations
    ed25519             sign/verify
    ecdsa-p256          sign/verify (ASN.1 or JWS marshaling, prehashed input)
    ml-dsa-65           sign/verify, FIPS 204 (post-quantum)
    ml-kem-768-x25519   the hybrid KEM of the manifests (kem.py): encrypt/decrypt and `datakey` (post-quantum)
"""

from __future__ import annotations

import base64
import json
import os
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, mldsa, x25519

from reconcilers.vault.backends import get_backend
from reconcilers.vault.service.storage.base import KeyValueStore as KeyValueStore

SYMMETRIC = ("aes256-gcm96", "chacha20-poly1305")
SIGNING = ("ed25519", "ecdsa-p256", "ml-dsa-65")
HYBRID = "ml-kem-768-x25519"
TYPES = (*SYMMETRIC, *SIGNING, HYBRID)
ALIASES = {"ml-dsa": "ml-dsa-65"}          # Vault's name with parameter_set 65
_NAME = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,126}[A-Za-z0-9_])?$")
PREFIX = "policy/"
WRITE_LOCK = threading.RLock()             # create, rotate, config and delete are read-modify-write


class TransitError(Exception):
    """A request the engine refuses: `status` is the HTTP status, the message goes to `errors`."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def b64e(raw: bytes) -> str:
    """Standard base64 with padding (what Vault writes)."""
    return base64.b64encode(raw).decode()


def b64d(text: Any, what: str) -> bytes:
    """Strict standard base64, or a 400 naming the field."""
    if not isinstance(text, str):
        raise TransitError(f"{what} must be a base64 string")
    try:
        return base64.b64decode(text, validate=True)
    except ValueError as err:
        raise TransitError(f"{what} is not valid base64") from err


@dataclass(frozen=True, slots=True, repr=False)
class Version:
    """One version's material (never in a repr)."""

    key: bytes                 # symmetric key, private seed/scalar encoding, or hybrid seed||x25519
    hmac_key: bytes
    public: bytes              # raw public key ("" for symmetric)
    created: float

    def __repr__(self) -> str:
        return f"Version(created={self.created})"


@dataclass(frozen=True, slots=True)
class Key:
    """A named key and its policy."""

    name: str
    type: str
    versions: Mapping[int, Version] = field(repr=False)
    derived: bool = False
    exportable: bool = False
    allow_plaintext_backup: bool = False
    deletion_allowed: bool = False
    min_decryption_version: int = 1
    min_encryption_version: int = 0
    auto_rotate_period: int = 0

    @property
    def latest_version(self) -> int:
        """The newest version."""
        return max(self.versions)

    def version(self, n: int | None, *, encrypting: bool) -> tuple[int, Version]:
        """Version `n` (None or 0: the latest; for encryption, at least min_encryption_version)."""
        if not n:
            n = self.latest_version
        if n not in self.versions:
            raise TransitError("requested version for encryption is higher than the latest key version"
                               if encrypting else "invalid key version")
        if encrypting and self.min_encryption_version and n < self.min_encryption_version:
            raise TransitError("requested version for encryption is less than the minimum encryption key version")
        if encrypting and n < self.min_decryption_version:
            # What it made could not be decrypted: refused, as Vault does.
            raise TransitError("requested version for encryption is less than the minimum decryption key version")
        if not encrypting and n < self.min_decryption_version:
            raise TransitError("ciphertext or signature version is disallowed by policy (too old)")
        return n, self.versions[n]


def check_name(name: str) -> str:
    """A key name Vault would accept, or a 400."""
    if not _NAME.match(name):
        raise TransitError(f"invalid key name {name[:80]!r}: letters, digits, `_ . -`, at most 128")
    return name


def material(key_type: str) -> tuple[bytes, bytes]:
    """Fresh (private material, raw public key) of a type."""
    if key_type in SYMMETRIC:
        return os.urandom(32), b""
    if key_type == "ed25519":
        sk = ed25519.Ed25519PrivateKey.generate()
        return sk.private_bytes_raw(), sk.public_key().public_bytes_raw()
    if key_type == "ecdsa-p256":
        ek = ec.generate_private_key(ec.SECP256R1())
        der = ek.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())
        return der, ek.public_key().public_bytes(serialization.Encoding.X962,
                                                  serialization.PublicFormat.UncompressedPoint)
    if key_type == "ml-dsa-65":
        seed = os.urandom(32)
        mk = mldsa.MLDSA65PrivateKey.from_seed_bytes(seed)
        return seed, mk.public_key().public_bytes_raw()
    if key_type == HYBRID:
        seed, xk = os.urandom(64), x25519.X25519PrivateKey.generate()
        pk_m = get_backend("openssl").kem_public_from_seed(seed)  # type: ignore[attr-defined]
        return seed + xk.private_bytes_raw(), bytes(pk_m) + xk.public_key().public_bytes_raw()
    raise TransitError(f"unknown key type {key_type!r}: one of {', '.join(TYPES)}")


def new_version() -> float:
    """A version's creation time."""
    return time.time()


def create(name: str, key_type: str, *, derived: bool = False, exportable: bool = False,
           allow_plaintext_backup: bool = False) -> Key:
    """A new key with version 1."""
    key_type = ALIASES.get(key_type, key_type)
    if key_type not in TYPES:
        raise TransitError(f"unknown key type {key_type!r}: one of {', '.join(TYPES)}")
    if derived and key_type not in SYMMETRIC:
        raise TransitError(f"key derivation is supported for {', '.join(SYMMETRIC)} keys only")
    private, public = material(key_type)
    return Key(check_name(name), key_type, {1: Version(private, os.urandom(32), public, new_version())},
               derived=derived, exportable=exportable, allow_plaintext_backup=allow_plaintext_backup)


def rotated(key: Key) -> Key:
    """`key` with a new latest version."""
    private, public = material(key.type)
    versions = {**key.versions, key.latest_version + 1: Version(private, os.urandom(32), public, new_version())}
    return replace(key, versions=versions)


def to_json(key: Key) -> bytes:
    """The stored document."""
    doc = {"name": key.name, "type": key.type, "derived": key.derived, "exportable": key.exportable,
           "allow_plaintext_backup": key.allow_plaintext_backup, "deletion_allowed": key.deletion_allowed,
           "min_decryption_version": key.min_decryption_version,
           "min_encryption_version": key.min_encryption_version, "auto_rotate_period": key.auto_rotate_period,
           "versions": {str(n): {"key": b64e(v.key), "hmac_key": b64e(v.hmac_key), "public": b64e(v.public),
                                 "created": v.created} for n, v in sorted(key.versions.items())}}
    return json.dumps(doc, sort_keys=True).encode()


def from_json(raw: bytes) -> Key:
    """A stored document back to a Key."""
    doc = json.loads(raw)
    versions = {int(n): Version(base64.b64decode(v["key"]), base64.b64decode(v["hmac_key"]),
                                base64.b64decode(v["public"]), float(v["created"]))
                for n, v in doc["versions"].items()}
    return Key(doc["name"], doc["type"], versions, derived=doc["derived"], exportable=doc["exportable"],
               allow_plaintext_backup=doc["allow_plaintext_backup"], deletion_allowed=doc["deletion_allowed"],
               min_decryption_version=doc["min_decryption_version"],
               min_encryption_version=doc["min_encryption_version"], auto_rotate_period=doc["auto_rotate_period"])


def load(store: KeyValueStore, name: str) -> Key | None:
    """The key called `name`, or None."""
    raw = store.get(PREFIX + check_name(name))
    return from_json(raw) if raw is not None else None


def need(store: KeyValueStore, name: str) -> Key:
    """The key called `name`, or a 404 as Vault words it."""
    key = load(store, name)
    if key is None:
        raise TransitError("encryption key not found", 404)
    return key


def save(store: KeyValueStore, key: Key) -> None:
    """Write the key's document."""
    store.put(PREFIX + key.name, to_json(key))


def names(store: KeyValueStore) -> list[str]:
    """Every key name."""
    return sorted(n for n in store.list(PREFIX) if not n.endswith("/"))
