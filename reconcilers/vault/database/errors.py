"""The database engine's errors; each carries the HTTP status the service answers with. None carries a password.

reconcilers.vault.errors.VaultError
 +-- DatabaseError            400: the request or the stored definition is wrong
      +-- DatabaseNotFound    404: no such connection, role or lease
      +-- StatementError      400: a statement failed in PostgreSQL (names the role and statement; no password)
      +-- DatabaseUnreachable 502: PostgreSQL cannot be reached (nothing was created; revocations are retried)
"""

from __future__ import annotations

from reconcilers.vault.errors import VaultError


class DatabaseError(VaultError):
    """A database request that cannot be served as asked."""

    status = 400


class DatabaseNotFound(DatabaseError):
    """The connection, role or lease named does not exist."""

    status = 404


class StatementError(DatabaseError):
    """PostgreSQL refused one of the role's statements."""


class DatabaseUnreachable(DatabaseError):
    """The database could not be reached (down, refusing, timing out)."""

    status = 502
