"""Errors of the vault service, each with the HTTP status Vault answers and its `{"errors": [...]}` text.

    ServiceError (status, messages)
      BadRequest ......... 400: malformed body, bad path, bad share, check-and-set mismatch
      PermissionDenied ... 403: no token, bad token, or Cedar said no (never says whether the path exists)
      NotFound ........... 404: no such secret or route
      Unsupported ........ 405: a method the route does not take
      TooLarge ........... 413: a body over the cap
      Sealed ............. 503: the vault is sealed
      Unavailable ........ 503/500: the storage backend or the audit log cannot be reached
"""

from __future__ import annotations


class ServiceError(Exception):
    """An error the API turns into a Vault-style JSON answer."""

    status = 500

    def __init__(self, *messages: str, status: int | None = None) -> None:
        super().__init__("; ".join(messages))
        self.messages = list(messages)
        self.headers: list[tuple[str, str]] = []      # extra response headers (Location of a redirect)
        if status is not None:
            self.status = status


class BadRequest(ServiceError):
    """The request is wrong: say what to change."""

    status = 400


class PermissionDenied(ServiceError):
    """No, without a hint of why beyond Vault's own text."""

    status = 403

    def __init__(self, *messages: str) -> None:
        super().__init__(*(messages or ("permission denied",)))


class NotFound(ServiceError):
    """Nothing at this path (only said to callers allowed to read it)."""

    status = 404

    def __init__(self, *messages: str) -> None:
        super().__init__(*messages)


class Unsupported(ServiceError):
    """The route exists but not for this method."""

    status = 405


class TooLarge(ServiceError):
    """The body is over the cap."""

    status = 413


class Sealed(ServiceError):
    """Every data endpoint answers this until the vault is unsealed."""

    status = 503

    def __init__(self) -> None:
        super().__init__("Vault is sealed")


class Unavailable(ServiceError):
    """A backend (storage, audit) failed: nothing was written; retry when it is back."""

    status = 503
