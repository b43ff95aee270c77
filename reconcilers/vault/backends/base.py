"""The one small crypto interface every backend implements: ML-KEM-768, ML-DSA-65, and AES-256-GCM.

Backends differ only in the post-quantum primitives. X25519, Ed25519 and AES-GCM always come from
`cryptography` (PQClean and liboqs ship no AEAD or classical curves), so the AEAD methods live here once.
Private post-quantum keys are carried as `PQSecret`: the FIPS 203/204 seed (what OpenSSL and `cryptography`
load), the expanded key (what PQClean and liboqs load), or both. A backend says clearly which form it lacks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from reconcilers.vault.errors import BackendUnavailable, DecryptError

MLKEM768_PUBLIC = 1184
MLKEM768_EXPANDED = 2400
MLKEM768_SEED = 64
MLKEM768_CT = 1088
MLDSA65_PUBLIC = 1952
MLDSA65_EXPANDED = 4032
MLDSA65_SEED = 32
MLDSA65_SIG = 3309


@dataclass(frozen=True, slots=True, repr=False)
class PQSecret:
    """A post-quantum private key: its seed, its expanded form, or both (repr hides the bytes)."""

    seed: bytes | None = None
    expanded: bytes | None = None

    def __repr__(self) -> str:
        forms = [name for name, v in (("seed", self.seed), ("expanded", self.expanded)) if v is not None]
        return f"PQSecret({'+'.join(forms) or 'empty'})"


class Backend(Protocol):
    """ML-KEM-768 and ML-DSA-65 from one implementation, plus the shared AEAD."""

    name: str

    def kem_keygen(self) -> tuple[bytes, PQSecret]:
        """A fresh ML-KEM-768 key pair: (encapsulation key, secret)."""

    def kem_encaps(self, public: bytes) -> tuple[bytes, bytes]:
        """Encapsulate to an ML-KEM-768 public key: (ciphertext, shared secret)."""

    def kem_decaps(self, secret: PQSecret, ciphertext: bytes) -> bytes:
        """The shared secret of a ciphertext (implicit rejection: a bad ciphertext gives a random secret)."""

    def sig_keygen(self) -> tuple[bytes, PQSecret]:
        """A fresh ML-DSA-65 key pair: (public key, secret)."""

    def sign(self, secret: PQSecret, message: bytes, context: bytes) -> bytes:
        """An ML-DSA-65 signature (pure mode, FIPS 204 context string)."""

    def verify(self, public: bytes, message: bytes, signature: bytes, context: bytes) -> bool:
        """True when the ML-DSA-65 signature is valid."""

    def seal(self, key: bytes, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
        """AES-256-GCM: ciphertext with the 16-byte tag appended."""

    def open(self, key: bytes, nonce: bytes, sealed: bytes, aad: bytes, where: str) -> bytes:
        """AES-256-GCM decryption; DecryptError naming `where` when the tag does not verify."""


class AeadMixin:
    """AES-256-GCM through `cryptography`, shared by every backend."""

    def seal(self, key: bytes, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
        """AES-256-GCM: ciphertext with the 16-byte tag appended."""
        return AESGCM(key).encrypt(nonce, plaintext, aad)

    def open(self, key: bytes, nonce: bytes, sealed: bytes, aad: bytes, where: str) -> bytes:
        """AES-256-GCM decryption; DecryptError naming `where` when the tag does not verify."""
        try:
            return AESGCM(key).decrypt(nonce, sealed, aad)
        except (InvalidTag, ValueError) as err:
            raise DecryptError(
                "the value does not decrypt: it was changed, truncated, or moved from another key or file",
                where=where,
                hint="restore the file from git history, or re-set the value with `stratum secret set`",
            ) from err


def need(value: bytes | None, backend: str, form: str, size: int) -> bytes:
    """The key form a backend needs, or BackendUnavailable saying which form is missing."""
    if value is None:
        raise BackendUnavailable(
            f"the {backend} backend needs the {form} form of this private key, which the key file does not hold",
            hint="use the backend the key was generated with (`vault.backend` in the host "
            "settings or --backend), or generate a new key with it",
        )
    if len(value) != size:
        raise BackendUnavailable(
            f"the {form} private key is {len(value)} bytes, expected {size}",
            hint="the key file is damaged; restore it from your backup",
        )
    return value
