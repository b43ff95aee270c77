"""What a cloud API's failure means for Stratum: libcloud's exceptions mapped onto the contract's classes.

    InvalidCredsError, 401/403            TerminalError  (wrong credentials: a human fixes the host settings)
    429, RequestLimitExceeded, Throttling TransientError (the executor retries with backoff; `after` from Retry-After)
    5xx, malformed answer, connection     TransientError
    other 4xx (InvalidAMIID.NotFound ...) TerminalError  (the revision asks for something the API refuses)
    anything else                         ApplyError     (fails the action; the run rolls back)

Messages name the provider and the resource and never carry credentials (libcloud's messages hold none; URLs
are not included).
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from reconcilers.errors import ApplyError, StratumError, TerminalError, TransientError

T = TypeVar("T")
_THROTTLED = ("RequestLimitExceeded", "Throttling", "ThrottlingException", "TooManyRequests", "SlowDown")
MAX_RETRY_AFTER = 300.0
_CREDENTIALS_HINT = "check the provider's credentials in the host settings ([infra.providers.NAME]) or environment"


def classify(err: BaseException, provider: str, where: str) -> StratumError:
    """The contract error for a failed call to `provider` about `where` (e.g. "server web")."""
    from libcloud.common.exceptions import BaseHTTPError, RateLimitReachedError
    from libcloud.common.types import InvalidCredsError, MalformedResponseError

    if isinstance(err, StratumError):
        return err
    text = str(getattr(err, "message", "") or err).strip()[:400] or type(err).__name__
    what = f"{provider}: {text}"                 # rendered after `where` (the resource), see StratumError
    if isinstance(err, InvalidCredsError):
        return TerminalError(f"{provider}: the API refused the credentials ({text})", where=where,
                             hint=_CREDENTIALS_HINT)
    if isinstance(err, RateLimitReachedError) or any(code in text for code in _THROTTLED):
        return TransientError(f"{what} (throttled)", where=where, after=_retry_after(err),
                              hint="the API throttles requests; lower [infra] parallelism if it persists")
    if isinstance(err, BaseHTTPError):
        code = int(getattr(err, "code", 0) or 0)
        if code >= 500 or code == 429:
            return TransientError(f"{what} (HTTP {code})", where=where, after=_retry_after(err),
                                  hint="the provider's API failed; it is retried, then the run rolls back")
        if code in (401, 403):
            return TerminalError(f"{what} (HTTP {code})", where=where, hint=_CREDENTIALS_HINT)
        return TerminalError(f"{what} (HTTP {code})", where=where,
                             hint="fix the resource's fields in infra/ (sizes, images and ids must exist)")
    if isinstance(err, MalformedResponseError):
        return TransientError(f"{provider}: the API answered something that is not its format",
                              where=where, hint="a proxy or the API failed; it is retried")
    if isinstance(err, (OSError, socket.timeout, TimeoutError)) or _is_requests_error(err):
        return TransientError(f"{provider}: cannot reach the API ({type(err).__name__})", where=where,
                              hint="check the provider's endpoint and the network; it is retried")
    return ApplyError(f"{what} ({type(err).__name__})", where=where,
                      hint="see the provider's message; fix infra/ or the host settings and push again")


def _retry_after(err: BaseException) -> float | None:
    headers = getattr(err, "headers", None) or {}
    value = headers.get("retry-after") if isinstance(headers, dict) else None
    try:
        # Capped: a hostile or broken endpoint must not park an apply thread for hours.
        return min(float(value), MAX_RETRY_AFTER) if value is not None else None
    except ValueError:
        return None


def _is_requests_error(err: BaseException) -> bool:
    try:
        import requests
    except ImportError:  # pragma: no cover - libcloud depends on requests
        return False
    return isinstance(err, requests.RequestException)


@contextmanager
def api_call(provider: str, where: str) -> Iterator[None]:
    """Run a block of API calls; any failure leaves it as the contract error `classify` picks."""
    try:
        yield
    except Exception as err:
        raise classify(err, provider, where) from err


def call(provider: str, where: str, fn: Callable[[], T]) -> T:
    """`fn()` with its failure classified (see `api_call`)."""
    with api_call(provider, where):
        return fn()
