"""The reference backend: ML-KEM-768 and ML-DSA-65 from the pure-Python FIPS 203/204 implementations
`kyber-py` and `dilithium-py`.

Slow (milliseconds per operation where the C backends take microseconds) but independent of OpenSSL and
PQClean, and short enough to read against the standards: the fourth voice in the KATs and the interop tests.
Seeds are expanded with the packages' own `key_derive` (FIPS 203 section 7.1, FIPS 204 section 6.1), not with
expand.py, so this backend checks that code too.
"""

from __future__ import annotations

import os
from typing import Any

from reconcilers.vault.backends.base import MLDSA65_SEED, MLKEM768_SEED, AeadMixin, PQSecret, need
from reconcilers.vault.errors import BackendUnavailable


def _load() -> tuple[Any, Any]:
    try:
        from dilithium_py.ml_dsa import ML_DSA_65  # type: ignore[import-untyped]
        from kyber_py.ml_kem import ML_KEM_768  # type: ignore[import-untyped]
    except ImportError as err:
        raise BackendUnavailable(
            "the reference backend needs the `kyber-py` and `dilithium-py` packages",
            hint="pip install kyber-py dilithium-py, or set vault.backend = 'openssl'",
        ) from err
    return ML_KEM_768, ML_DSA_65


class ReferenceBackend(AeadMixin):
    """ML-KEM-768 / ML-DSA-65 in pure Python (kyber-py, dilithium-py)."""

    name = "reference"

    def __init__(self) -> None:
        self._kem, self._sig = _load()

    def kem_keygen(self) -> tuple[bytes, PQSecret]:
        """A fresh key pair from a random 64-byte seed d||z (kept, so every backend can load the key)."""
        seed = os.urandom(MLKEM768_SEED)
        public, expanded = self._kem.key_derive(seed)
        return bytes(public), PQSecret(seed=seed, expanded=bytes(expanded))

    def kem_encaps(self, public: bytes) -> tuple[bytes, bytes]:
        """Encapsulate: (ciphertext, shared secret)."""
        shared, ciphertext = self._kem.encaps(public)
        return bytes(ciphertext), bytes(shared)

    def kem_decaps(self, secret: PQSecret, ciphertext: bytes) -> bytes:
        """Decapsulate with the expanded key, derived here from the seed when the key holds only that."""
        key = secret.expanded if secret.expanded is not None else self._kem.key_derive(
            need(secret.seed, self.name, "seed", MLKEM768_SEED))[1]
        return bytes(self._kem.decaps(key, ciphertext))

    def sig_keygen(self) -> tuple[bytes, PQSecret]:
        """A fresh key pair from a random 32-byte seed xi."""
        seed = os.urandom(MLDSA65_SEED)
        public, expanded = self._sig.key_derive(seed)
        return bytes(public), PQSecret(seed=seed, expanded=bytes(expanded))

    def sign(self, secret: PQSecret, message: bytes, context: bytes) -> bytes:
        """ML-DSA-65 pure signature (hedged, as FIPS 204 recommends) with a context string."""
        key = secret.expanded if secret.expanded is not None else self._sig.key_derive(
            need(secret.seed, self.name, "seed", MLDSA65_SEED))[1]
        return bytes(self._sig.sign(key, message, context))

    def verify(self, public: bytes, message: bytes, signature: bytes, context: bytes) -> bool:
        """True when the signature verifies; wrong lengths are a refusal, not an error."""
        try:
            return bool(self._sig.verify(public, message, signature, context))
        except (ValueError, IndexError, TypeError):
            return False
