"""The operations on one transit key, byte-compatible in format with Vault's.

Ciphertexts, signatures and HMACs are `vault:v<N>:<base64>` (JWS-marshaled signatures: unpadded base64url).
Symmetric ciphertexts are nonce (12) || ciphertext || tag, as Vault's AES-GCM and ChaCha20-Poly1305 write them;
a derived key is HKDF-SHA256(key, info = context), Vault's `hkdf_sha256` KDF. The hybrid type wraps with the
manifests' ML-KEM-768 + X25519 KEM: KEM ciphertext (1120) || nonce (12) || AES-256-GCM under the shared secret.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac as std_hmac
import os
from typing import Any

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, mldsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    Prehashed,
    decode_dss_signature,
    encode_dss_signature,
)
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from reconcilers.vault import kem
from reconcilers.vault.backends import PQSecret, get_backend
from reconcilers.vault.errors import VaultError
from reconcilers.vault.keys import Identity, Recipient
from reconcilers.vault.transit.keys import HYBRID, SIGNING, SYMMETRIC, Key, TransitError, Version, b64e

HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha2-224": hashes.SHA224, "sha2-256": hashes.SHA256, "sha2-384": hashes.SHA384, "sha2-512": hashes.SHA512,
    "sha3-224": hashes.SHA3_224, "sha3-256": hashes.SHA3_256, "sha3-384": hashes.SHA3_384,
    "sha3-512": hashes.SHA3_512,
}
_HASHLIB = {"sha2-224": "sha224", "sha2-256": "sha256", "sha2-384": "sha384", "sha2-512": "sha512",
            "sha3-224": "sha3_224", "sha3-256": "sha3_256", "sha3-384": "sha3_384", "sha3-512": "sha3_512"}
_KEM_CT = kem.CIPHERTEXT_SIZE


def hash_name(algorithm: str | None) -> str:
    """A supported hash algorithm name (default sha2-256), or a 400."""
    name = algorithm or "sha2-256"
    if name not in HASHES:
        raise TransitError(f"unsupported hash algorithm {name!r}: one of {', '.join(HASHES)}")
    return name


def digest(algorithm: str, data: bytes) -> bytes:
    """The hash of `data`."""
    return hashlib.new(_HASHLIB[hash_name(algorithm)], data).digest()


def wrap(version: int, raw: bytes, *, urlsafe: bool = False) -> str:
    """`vault:v<N>:` and the base64 of `raw`."""
    body = base64.urlsafe_b64encode(raw).decode().rstrip("=") if urlsafe else b64e(raw)
    return f"vault:v{version}:{body}"


def unwrap(text: Any, what: str = "ciphertext", *, urlsafe: bool = False) -> tuple[int, bytes]:
    """(version, raw bytes) of a `vault:v<N>:<base64>` string, or a 400 as Vault words it."""
    if not isinstance(text, str) or not text.startswith("vault:"):
        raise TransitError(f"invalid {what}: no prefix")
    parts = text.split(":", 2)
    if len(parts) != 3 or not parts[1].startswith("v") or not parts[1][1:].isdigit():
        raise TransitError(f"invalid {what}: wrong number of fields")
    try:
        if urlsafe:
            raw = base64.urlsafe_b64decode(parts[2] + "=" * (-len(parts[2]) % 4))
        else:
            raw = base64.b64decode(parts[2], validate=True)
    except (binascii.Error, ValueError) as err:
        raise TransitError(f"invalid {what}: could not decode the base64") from err
    return int(parts[1][1:]), raw


def _symmetric_key(key: Key, v: Version, context: bytes | None) -> bytes:
    if not key.derived:
        return v.key
    if not context:
        raise TransitError("missing 'context' for key derivation; the key was created using a derived key, "
                           "which means additional, per-request information must be included")
    return HKDF(hashes.SHA256(), 32, None, context).derive(v.key)


def _aead(key: Key, material: bytes) -> AESGCM | ChaCha20Poly1305:
    return AESGCM(material) if key.type == "aes256-gcm96" else ChaCha20Poly1305(material)


def _identity(v: Version) -> tuple[Identity, Recipient]:
    recipient = Recipient(mlkem=v.public[:-32], x25519=v.public[-32:])
    return Identity(recipient, PQSecret(seed=v.key[:64]), v.key[64:], b""), recipient


def encrypt(key: Key, plaintext: bytes, *, version: int | None = None, context: bytes | None = None,
            aad: bytes | None = None) -> tuple[str, int]:
    """(`vault:v<N>:...`, N)."""
    if key.type not in (*SYMMETRIC, HYBRID):
        raise TransitError(f"key type {key.type} does not support encryption")
    n, v = key.version(version, encrypting=True)
    nonce = os.urandom(12)
    if key.type == HYBRID:
        _, recipient = _identity(v)
        ct, shared = kem.encapsulate(get_backend("openssl"), recipient)
        return wrap(n, ct + nonce + AESGCM(shared).encrypt(nonce, plaintext, aad or None)), n
    sealed = _aead(key, _symmetric_key(key, v, context)).encrypt(nonce, plaintext, aad or None)
    return wrap(n, nonce + sealed), n


def decrypt(key: Key, ciphertext: Any, *, context: bytes | None = None, aad: bytes | None = None) -> bytes:
    """The plaintext of a `vault:v<N>:...` ciphertext made with this key."""
    if key.type not in (*SYMMETRIC, HYBRID):
        raise TransitError(f"key type {key.type} does not support decryption")
    n, raw = unwrap(ciphertext)
    _, v = key.version(n, encrypting=False)
    try:
        if key.type == HYBRID:
            if len(raw) < _KEM_CT + 12 + 16:
                raise TransitError("invalid ciphertext: too short")
            identity, _ = _identity(v)
            shared = kem.decapsulate(get_backend("openssl"), identity, raw[:_KEM_CT], "transit")
            nonce = raw[_KEM_CT:_KEM_CT + 12]
            return AESGCM(shared).decrypt(nonce, raw[_KEM_CT + 12:], aad or None)
        if len(raw) < 12 + 16:
            raise TransitError("invalid ciphertext: too short")
        return _aead(key, _symmetric_key(key, v, context)).decrypt(raw[:12], raw[12:], aad or None)
    except (InvalidTag, VaultError) as err:
        raise TransitError("cipher: message authentication failed") from err


def sign(key: Key, data: bytes, *, version: int | None = None, algorithm: str | None = None,
         prehashed: bool = False, marshaling: str | None = None) -> tuple[str, int]:
    """(`vault:v<N>:<signature>`, N). `data` is hashed with `algorithm` first for ECDSA unless `prehashed`."""
    if key.type not in SIGNING:
        raise TransitError(f"key type {key.type} does not support signing")
    marshaling = _marshaling(key, marshaling)
    n, v = key.version(version, encrypting=True)
    if key.type == "ecdsa-p256":
        private = serialization.load_der_private_key(v.key, None)
        assert isinstance(private, ec.EllipticCurvePrivateKey)
        der = private.sign(data, ec.ECDSA(_ecdsa_hash(algorithm, prehashed, data)))
        if marshaling == "jws":
            r, s = decode_dss_signature(der)
            return wrap(n, r.to_bytes(32, "big") + s.to_bytes(32, "big"), urlsafe=True), n
        return wrap(n, der), n
    if prehashed:
        raise TransitError(f"prehashed input is not supported for {key.type} keys")
    if key.type == "ed25519":
        return wrap(n, ed25519.Ed25519PrivateKey.from_private_bytes(v.key).sign(data)), n
    return wrap(n, mldsa.MLDSA65PrivateKey.from_seed_bytes(v.key).sign(data)), n


def verify(key: Key, data: bytes, signature: Any, *, algorithm: str | None = None, prehashed: bool = False,
           marshaling: str | None = None) -> bool:
    """Whether `signature` (a `vault:v<N>:` string) is valid for `data`."""
    if key.type not in SIGNING:
        raise TransitError(f"key type {key.type} does not support verification")
    marshaling = _marshaling(key, marshaling)
    n, raw = unwrap(signature, "signature", urlsafe=marshaling == "jws")
    _, v = key.version(n, encrypting=False)
    try:
        if key.type == "ecdsa-p256":
            public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), v.public)
            if marshaling == "jws":
                if len(raw) != 64:
                    return False
                raw = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
            public.verify(raw, data, ec.ECDSA(_ecdsa_hash(algorithm, prehashed, data)))
        elif prehashed:
            raise TransitError(f"prehashed input is not supported for {key.type} keys")
        elif key.type == "ed25519":
            ed25519.Ed25519PublicKey.from_public_bytes(v.public).verify(raw, data)
        else:
            mldsa.MLDSA65PublicKey.from_public_bytes(v.public).verify(raw, data)
    except (InvalidSignature, ValueError):
        return False
    return True


def _marshaling(key: Key, marshaling: str | None) -> str:
    name = marshaling or "asn1"
    if name not in ("asn1", "jws"):
        raise TransitError(f"unsupported marshaling algorithm {name!r}: asn1 or jws")
    if name == "jws" and key.type != "ecdsa-p256":
        raise TransitError("marshaling algorithm jws applies to ECDSA keys only")
    return name


def _ecdsa_hash(algorithm: str | None, prehashed: bool, data: bytes) -> Any:
    algo = HASHES[hash_name(algorithm)]()
    if prehashed:
        if len(data) != algo.digest_size:
            raise TransitError(f"prehashed input must be a {hash_name(algorithm)} digest ({algo.digest_size} bytes)")
        return Prehashed(algo)
    return algo


def hmac(key: Key, data: bytes, *, version: int | None = None, algorithm: str | None = None) -> str:
    """`vault:v<N>:<base64 HMAC>` with the version's HMAC key."""
    n, v = key.version(version, encrypting=True)
    return wrap(n, std_hmac.new(v.hmac_key, data, _HASHLIB[hash_name(algorithm)]).digest())


def verify_hmac(key: Key, data: bytes, mac: Any, *, algorithm: str | None = None) -> bool:
    """Whether `mac` is the HMAC of `data` (compared in constant time)."""
    n, raw = unwrap(mac, "hmac")
    _, v = key.version(n, encrypting=False)
    return std_hmac.compare_digest(raw, std_hmac.new(v.hmac_key, data, _HASHLIB[hash_name(algorithm)]).digest())


EXPORT_KINDS = ("encryption-key", "signing-key", "hmac-key", "public-key")


def export(key: Key, kind: str, version: str | None) -> dict[str, Any]:
    """Vault's export body: {name, type, keys: {"<N>": material}}. Private material only from exportable keys."""
    if kind not in EXPORT_KINDS:
        raise TransitError(f"invalid export type {kind!r}: one of {', '.join(EXPORT_KINDS)}")
    if kind != "public-key" and not key.exportable:
        raise TransitError("private key material is not exportable")
    if kind == "encryption-key" and key.type not in (*SYMMETRIC, HYBRID):
        raise TransitError("encryption key not supported by this key type")
    if kind in ("signing-key", "public-key") and key.type not in SIGNING and key.type != HYBRID:
        raise TransitError(f"{kind} not supported by key type {key.type}")
    if kind == "signing-key" and key.type not in SIGNING:
        raise TransitError(f"signing-key not supported by key type {key.type}")
    if version in (None, "", "latest"):
        chosen = sorted(key.versions)
        if version == "latest":
            chosen = [key.latest_version]
    elif str(version).isdigit() and int(str(version)) in key.versions:
        chosen = [int(str(version))]
    else:
        raise TransitError("invalid key version")
    return {"name": key.name, "type": key.type,
            "keys": {str(n): _material(key, key.versions[n], kind) for n in chosen}}


def _material(key: Key, v: Version, kind: str) -> str:
    if kind == "hmac-key":
        return b64e(v.hmac_key)
    if kind == "public-key":
        return public_text(key, v)
    if key.type == "ecdsa-p256":
        private = serialization.load_der_private_key(v.key, None)
        return private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                     serialization.NoEncryption()).decode()
    if key.type == "ed25519":
        return b64e(v.key + v.public)          # Vault exports the 64-byte private key (seed || public)
    return b64e(v.key)


def public_text(key: Key, v: Version) -> str:
    """The public key as Vault shows it: PEM for ECDSA, base64 for the others."""
    if key.type == "ecdsa-p256":
        public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), v.public)
        return public.public_bytes(serialization.Encoding.PEM,
                                   serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return b64e(v.public)
