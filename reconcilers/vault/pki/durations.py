"""Vault-style durations for the PKI engine: reconcilers/vault/durations.py, with its error as a PkiError."""

from __future__ import annotations

from reconcilers.vault.durations import HINT, MAX_SECONDS, DurationError
from reconcilers.vault.durations import parse_duration as _parse
from reconcilers.vault.pki.errors import PkiError

__all__ = ["MAX_SECONDS", "parse_duration"]


def parse_duration(value: object, field: str) -> int:
    """Seconds in `value` (int, digit string, or units s/m/h/d); a PkiError naming the field otherwise."""
    try:
        return _parse(value, field)
    except DurationError as err:
        raise PkiError(str(err), hint=HINT) from None
