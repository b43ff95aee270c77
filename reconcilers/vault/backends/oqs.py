"""The optional liboqs backend, used only when a liboqs shared library is already installed.

`import oqs` without the C library sleeps and then tries to download and build
liboqs; so this module finds the library first (`OQS_INSTALL_PATH`,
then the linker's search path) and imports `oqs` only when it exists.
"""

from __future__ import annotations

import ctypes.util
import os
from pathlib import Path
from typing import Any

from reconcilers.vault.backends.base import AeadMixin, PQSecret, expanded_kem, expanded_sig
from reconcilers.vault.errors import BackendUnavailable

KEM_ALG = "ML-KEM-768"
SIG_ALG = "ML-DSA-65"


def liboqs_library() -> str | None:
    """The path or name of an installed liboqs shared library, or None; never imports `oqs`."""
    base = os.environ.get("OQS_INSTALL_PATH")
    if base:
        for sub in ("lib", "lib64"):
            for found in sorted(Path(base, sub).glob("liboqs.so*")):
                return str(found)
    return ctypes.util.find_library("oqs")


def _import_oqs() -> Any:
    if liboqs_library() is None:
        raise BackendUnavailable(
            "the oqs backend needs the liboqs shared library, which is not installed",
            hint="install liboqs (and set OQS_INSTALL_PATH) or use vault.backend = 'openssl'",
        )
    try:
        import oqs  # type: ignore[import-not-found, unused-ignore]
    except ImportError as err:
        raise BackendUnavailable(
            "liboqs is installed but the `liboqs-python` package is not", hint="pip install liboqs-python"
        ) from err
    return oqs


class OqsBackend(AeadMixin):
    """ML-KEM-768 / ML-DSA-65 through liboqs-python."""

    name = "oqs"

    def __init__(self) -> None:
        self._oqs = _import_oqs()

    def kem_keygen(self) -> tuple[bytes, PQSecret]:
        """A fresh key pair; the secret is the expanded decapsulation key."""
        with self._oqs.KeyEncapsulation(KEM_ALG) as kem:
            public = bytes(kem.generate_keypair())
            return public, PQSecret(expanded=bytes(kem.export_secret_key()))

    def kem_encaps(self, public: bytes) -> tuple[bytes, bytes]:
        """Encapsulate: (ciphertext, shared secret)."""
        with self._oqs.KeyEncapsulation(KEM_ALG) as kem:
            ciphertext, shared = kem.encap_secret(public)
            return bytes(ciphertext), bytes(shared)

    def kem_decaps(self, secret: PQSecret, ciphertext: bytes) -> bytes:
        """Decapsulate with the expanded key."""
        key = expanded_kem(secret, self.name)
        with self._oqs.KeyEncapsulation(KEM_ALG, secret_key=key) as kem:
            return bytes(kem.decap_secret(ciphertext))

    def sig_keygen(self) -> tuple[bytes, PQSecret]:
        """A fresh key pair; the secret is the expanded signing key."""
        with self._oqs.Signature(SIG_ALG) as sig:
            public = bytes(sig.generate_keypair())
            return public, PQSecret(expanded=bytes(sig.export_secret_key()))

    def sign(self, secret: PQSecret, message: bytes, context: bytes) -> bytes:
        """ML-DSA-65 pure signature with a context string."""
        key = expanded_sig(secret, self.name)
        with self._oqs.Signature(SIG_ALG, secret_key=key) as sig:
            return bytes(sig.sign_with_ctx_str(message, context))

    def verify(self, public: bytes, message: bytes, signature: bytes, context: bytes) -> bool:
        """True when the signature verifies."""
        with self._oqs.Signature(SIG_ALG) as sig:
            return bool(sig.verify_with_ctx_str(message, signature, context, public))
