"""An independent implementation: ML-KEM-768 and ML-DSA-65 from PQClean through the `pqcrypto` package.

PQClean works on expanded private keys and has no seed entry point: seed-form keys (what `keys.generate` makes
for every backend) are expanded in Python first (expand.py, checked against the NIST KATs), once per key.
"""

from __future__ import annotations

from types import ModuleType

from reconcilers.vault.backends.base import AeadMixin, PQSecret, expanded_kem, expanded_sig
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
        """Decapsulate with the expanded key (derived from the seed when the key holds only that)."""
        key = expanded_kem(secret, self.name)
        return bytes(self._kem.decaps(key, ciphertext))

    def sig_keygen(self) -> tuple[bytes, PQSecret]:
        """A fresh key pair; the secret is the 4032-byte expanded signing key."""
        public, secret = self._sig.keygen()
        return bytes(public), PQSecret(expanded=bytes(secret))

    def sign(self, secret: PQSecret, message: bytes, context: bytes) -> bytes:
        """ML-DSA-65 pure signature with a context string."""
        key = expanded_sig(secret, self.name)
        return bytes(self._sig.sign(key, message, context))

    def verify(self, public: bytes, message: bytes, signature: bytes, context: bytes) -> bool:
        """True when the signature verifies (pqcrypto raises a ValueError on a bad one)."""
        try:
            result = self._sig.verify(public, message, signature, context)
        except ValueError:  # InvalidSignatureError, and wrong key, signature or context lengths
            return False
        return result is None or bool(result)
