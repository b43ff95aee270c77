"""An independent implementation: ML-KEM-768 and ML-DSA-65 from PQClean through the `pqcrypto` package.

PQClean works on expanded private keys and has no seed entry point, so keys made here hold the expanded form
(and, for ML-DSA, the public key, which cannot be recomputed from the expanded secret without the library).
"""

from __future__ import annotations

from types import ModuleType

from reconcilers.vault.backends.base import MLDSA65_EXPANDED, MLKEM768_EXPANDED, AeadMixin, PQSecret, need
from reconcilers.vault.errors import BackendUnavailable


def _load() -> tuple[ModuleType, ModuleType]:
    try:
        from pqcrypto import ml_dsa_65, ml_kem_768  # type: ignore[import-untyped]
    except ImportError as err:
        raise BackendUnavailable(
            "the pqclean backend needs the `pqcrypto` package",
            hint="pip install pqcrypto, or set vault.backend = 'openssl'",
        ) from err
    return ml_kem_768, ml_dsa_65


class PqcleanBackend(AeadMixin):
    """ML-KEM-768 / ML-DSA-65 through `pqcrypto` (PQClean C code)."""

    name = "pqclean"

    def __init__(self) -> None:
        self._kem, self._sig = _load()

    def kem_keygen(self) -> tuple[bytes, PQSecret]:
        """A fresh key pair; the secret is the 2400-byte expanded decapsulation key."""
        public, secret = self._kem.keygen()
        return bytes(public), PQSecret(expanded=bytes(secret))

    def kem_encaps(self, public: bytes) -> tuple[bytes, bytes]:
        """Encapsulate: (ciphertext, shared secret)."""
        ciphertext, shared = self._kem.encaps(public)
        return bytes(ciphertext), bytes(shared)

    def kem_decaps(self, secret: PQSecret, ciphertext: bytes) -> bytes:
        """Decapsulate with the expanded key."""
        key = need(secret.expanded, self.name, "expanded", MLKEM768_EXPANDED)
        return bytes(self._kem.decaps(key, ciphertext))

    def sig_keygen(self) -> tuple[bytes, PQSecret]:
        """A fresh key pair; the secret is the 4032-byte expanded signing key."""
        public, secret = self._sig.keygen()
        return bytes(public), PQSecret(expanded=bytes(secret))

    def sign(self, secret: PQSecret, message: bytes, context: bytes) -> bytes:
        """ML-DSA-65 pure signature with a context string."""
        key = need(secret.expanded, self.name, "expanded", MLDSA65_EXPANDED)
        return bytes(self._sig.sign(key, message, context))

    def verify(self, public: bytes, message: bytes, signature: bytes, context: bytes) -> bool:
        """True when the signature verifies (PQClean raises on a bad one)."""
        try:
            result = self._sig.verify(public, message, signature, context)
        except Exception:
            return False
        return result is None or bool(result)
