"""The one small crypto interface every backend implements: ML-KEM-768, ML-DSA-65, and AES-256-GCM.

Backends differ only in the post-quantum primitives. X25519, Ed25519 and AES-GCM always come from
`cryptography` (PQClean and liboqs ship no AEAD or classical curves), so the AEAD methods live here once.
Private post-quantum keys are carried as `PQSecret`: the FIPS 203/204 seed (what OpenSSL and `cryptography`
load), the expanded key (what PQClean and liboqs load), or both. Keys are generated as seeds, and a backend that
needs the expanded form derives it (`expanded_kem` / `expanded_sig`, through expand.py), so every key works with
every backend. Only an expanded-only key (written by an earlier pqclean/oqs keygen) cannot reach OpenSSL.
`cryptography` is imported where it is used, here and in keys/kem/envelope/rules_sig: ~45 ms and ~10 MB
resident that a repository without secret manifests never needs (validate, plan, the idle daemon).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from reconcilers.vault import expand
from reconcilers.vault.errors import BackendUnavailable, DecryptError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

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

    # The last key's cipher object: a manifest's values all use one data key. One entry only, so no data key
    # outlives the next manifest in here; a race between threads only costs a rebuild (the tuple is replaced whole).
    _last: tuple[bytes, AESGCM] | None = None

    def _aead(self, key: bytes) -> AESGCM:
        last = self._last
        if last is not None and last[0] == key:
            return last[1]
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # here, not at the top: see the module doc

        cipher = AESGCM(key)
        self._last = (key, cipher)
        return cipher

    def seal(self, key: bytes, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
        """AES-256-GCM: ciphertext with the 16-byte tag appended."""
        return self._aead(key).encrypt(nonce, plaintext, aad)

    def open(self, key: bytes, nonce: bytes, sealed: bytes, aad: bytes, where: str) -> bytes:
        """AES-256-GCM decryption; DecryptError naming `where` when the tag does not verify."""
        from cryptography.exceptions import InvalidTag

        try:
            return self._aead(key).decrypt(nonce, sealed, aad)
        except (InvalidTag, ValueError) as err:
            raise DecryptError(
                "the value does not decrypt: it was changed, truncated, or moved from another key or file",
                where=where,
                hint="restore the file from git history, or re-set the value with `stratum secret set`",
            ) from err


def need(value: bytes | None, backend: str, form: str, size: int) -> bytes:
    """The key form a backend needs, or BackendUnavailable saying which form is missing."""
    if value is None and form == "seed":
        raise BackendUnavailable(
            f"the {backend} backend needs the seed form of this private key, and the key file holds only the "
            "expanded form (written by an earlier pqclean/oqs keygen): OpenSSL loads ML-KEM/ML-DSA private keys "
            "from seeds only, and a seed cannot be recovered from an expanded key",
            hint="use the pqclean backend with this key, or make a new key with `stratum secret keygen` (seed "
            "form, usable by every backend), add its recipient to the rules and run `stratum secret updatekeys`",
        )
    if value is None:
        raise BackendUnavailable(f"the {backend} backend got an empty private key", hint="check the key file")
    if len(value) != size:
        raise BackendUnavailable(
            f"the {form} private key is {len(value)} bytes, expected {size}",
            hint="the key file is damaged; restore it from your backup",
        )
    return value


def expanded_kem(secret: PQSecret, backend: str) -> bytes:
    """The 2400-byte expanded ML-KEM-768 key: as stored, or expanded from the seed (FIPS 203, cached)."""
    if secret.expanded is None and secret.seed is not None:
        return expand.mlkem768(need(secret.seed, backend, "seed", MLKEM768_SEED))[1]
    return need(secret.expanded, backend, "expanded", MLKEM768_EXPANDED)


def expanded_sig(secret: PQSecret, backend: str) -> bytes:
    """The 4032-byte expanded ML-DSA-65 key: as stored, or expanded from the seed (FIPS 204, cached)."""
    if secret.expanded is None and secret.seed is not None:
        return expand.mldsa65(need(secret.seed, backend, "seed", MLDSA65_SEED))[1]
    return need(secret.expanded, backend, "expanded", MLDSA65_EXPANDED)
