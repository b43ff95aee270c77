"""Pluggable crypto backends, chosen by name (`vault.backend` host setting, repo `vault.backend`, --backend).

openssl   `cryptography` (OpenSSL 3.5 in its wheels)       the default
pqclean   `pqcrypto` (PQClean C code)                      an independent implementation
oqs       liboqs-python, only when liboqs is installed     detected without importing `oqs`
reference `kyber-py` + `dilithium-py` (pure Python)         slow; a fourth, independent implementation
"""

from __future__ import annotations

import functools

from reconcilers.vault.backends.base import Backend, PQSecret
from reconcilers.vault.errors import BackendUnavailable

NAMES = ("openssl", "pqclean", "oqs", "reference")
DEFAULT = "openssl"

__all__ = ["DEFAULT", "NAMES", "Backend", "PQSecret", "available", "get_backend"]


@functools.cache
def get_backend(name: str = DEFAULT) -> Backend:
    """The backend called `name`; BackendUnavailable when unknown or not installed here."""
    if name == "openssl":
        from reconcilers.vault.backends.openssl import OpensslBackend

        return OpensslBackend()
    if name == "pqclean":
        from reconcilers.vault.backends.pqclean import PqcleanBackend

        return PqcleanBackend()
    if name == "oqs":
        from reconcilers.vault.backends.oqs import OqsBackend

        return OqsBackend()
    if name == "reference":
        from reconcilers.vault.backends.reference import ReferenceBackend

        return ReferenceBackend()
    raise BackendUnavailable(f"unknown crypto backend {name!r}", hint=f"choose one of {', '.join(NAMES)}")


def available() -> dict[str, str]:
    """Each backend's status: "ok" or why it cannot run here."""
    out: dict[str, str] = {}
    for name in NAMES:
        try:
            get_backend(name)
            out[name] = "ok"
        except BackendUnavailable as err:
            out[name] = err.what
    return out
