"""The default backend: ML-KEM-768 and ML-DSA-65 from OpenSSL 3.5 inside the `cryptography` wheels.

`cryptography` loads post-quantum private keys from their FIPS seeds only (and exports only seeds), so keys
hold the seed; other backends expand it (expand.py). Key objects are cached: parsing a public key or expanding
a seed costs more than the operation itself, and the daemon opens many manifests with the same few keys.
"""

from __future__ import annotations

import functools

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import mldsa, mlkem

from reconcilers.vault.backends.base import MLDSA65_SEED, MLKEM768_SEED, AeadMixin, PQSecret, need


@functools.lru_cache(maxsize=64)
def _kem_private(seed: bytes) -> mlkem.MLKEM768PrivateKey:
    # Expanding a seed costs more than a decapsulation; the daemon opens many manifests with one key.
    return mlkem.MLKEM768PrivateKey.from_seed_bytes(seed)


@functools.lru_cache(maxsize=16)
def _sig_private(seed: bytes) -> mldsa.MLDSA65PrivateKey:
    return mldsa.MLDSA65PrivateKey.from_seed_bytes(seed)


@functools.lru_cache(maxsize=256)
def _kem_public(public: bytes) -> mlkem.MLKEM768PublicKey:
    return mlkem.MLKEM768PublicKey.from_public_bytes(public)


@functools.lru_cache(maxsize=256)
def _sig_public(public: bytes) -> mldsa.MLDSA65PublicKey:
    return mldsa.MLDSA65PublicKey.from_public_bytes(public)


class OpensslBackend(AeadMixin):
    """ML-KEM-768 / ML-DSA-65 through `cryptography` (OpenSSL)."""

    name = "openssl"

    def kem_keygen(self) -> tuple[bytes, PQSecret]:
        """A fresh ML-KEM-768 key pair; the secret is the 64-byte seed d||z."""
        key = mlkem.MLKEM768PrivateKey.generate()
        return key.public_key().public_bytes_raw(), PQSecret(seed=key.private_bytes_raw())

    def kem_public_from_seed(self, seed: bytes) -> bytes:
        """The encapsulation key of a seed (deterministic key generation, FIPS 203 ML-KEM.KeyGen_internal)."""
        return _kem_private(seed).public_key().public_bytes_raw()

    def kem_encaps(self, public: bytes) -> tuple[bytes, bytes]:
        """Encapsulate: (ciphertext, shared secret)."""
        shared, ciphertext = _kem_public(public).encapsulate()
        return ciphertext, shared

    def kem_decaps(self, secret: PQSecret, ciphertext: bytes) -> bytes:
        """Decapsulate with the seed form of the key."""
        return _kem_private(need(secret.seed, self.name, "seed", MLKEM768_SEED)).decapsulate(ciphertext)

    def sig_keygen(self) -> tuple[bytes, PQSecret]:
        """A fresh ML-DSA-65 key pair; the secret is the 32-byte seed xi."""
        key = mldsa.MLDSA65PrivateKey.generate()
        return key.public_key().public_bytes_raw(), PQSecret(seed=key.private_bytes_raw())

    def sig_public_from_seed(self, seed: bytes) -> bytes:
        """The public key of a seed (FIPS 204 ML-DSA.KeyGen_internal)."""
        return _sig_private(seed).public_key().public_bytes_raw()

    def sign(self, secret: PQSecret, message: bytes, context: bytes) -> bytes:
        """ML-DSA-65 pure signature with a context string (hedged: OpenSSL mixes in fresh randomness)."""
        key = _sig_private(need(secret.seed, self.name, "seed", MLDSA65_SEED))
        return key.sign(message, context)

    def verify(self, public: bytes, message: bytes, signature: bytes, context: bytes) -> bool:
        """True when the signature verifies."""
        try:
            _sig_public(public).verify(signature, message, context)
        except (InvalidSignature, ValueError):
            return False
        return True
