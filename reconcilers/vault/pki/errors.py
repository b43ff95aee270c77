"""The PKI engine's errors: each carries the HTTP status the service answers with, and says what to do.

reconcilers.vault.errors.VaultError
 +-- PkiError              status 400: the request is wrong (a name outside the role, a TTL over max_ttl, a bad CSR)
      +-- PkiNotFound      status 404: no such role, certificate or CA
      +-- PkiNotConfigured status 400: the mount has no CA yet (generate a root or set a signed intermediate)

No error message carries a private key.
"""

from __future__ import annotations

from reconcilers.vault.errors import VaultError


class PkiError(VaultError):
    """A PKI request that cannot be served as asked."""

    status = 400


class PkiNotFound(PkiError):
    """The role, certificate or CA named does not exist."""

    status = 404


class PkiNotConfigured(PkiError):
    """The mount has no issuing CA yet."""
