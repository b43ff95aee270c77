"""Vault-style durations in the repo and in engine requests: whole seconds as a number or digit string, or
units s/m/h/d ("720h", "30m", "1h30m", "10d"). One parser for the PKI engine, the database engine and Transit
(each wraps the error in its own class); the vault service's request parser (service/durations.py) also takes
milliseconds and fractions, as Vault's API does, and stays apart."""

from __future__ import annotations

import re

_PART = re.compile(r"(\d+)([smhd])")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_SECONDS = 100 * 365 * 86400        # a bound: no duration beyond a century
MAX_TEXT = 32                          # a bound on what is parsed at all
HINT = 'give seconds or a duration such as "720h", "30m" or "10d"'


class DurationError(ValueError):
    """`value` is not a duration; the message names the field and shows (a bounded part of) the value."""


def parse_duration(value: object, field: str) -> int:
    """Seconds in `value` (int, digit string, or units s/m/h/d); DurationError naming `field` otherwise."""
    seconds: int | None = None
    if isinstance(value, bool):
        seconds = None
    elif isinstance(value, int):
        seconds = value
    elif isinstance(value, str):
        text = value.strip()
        if text.isdigit() and len(text) <= MAX_TEXT:
            seconds = int(text)
        elif text and len(text) <= MAX_TEXT and _PART.sub("", text) == "":
            seconds = sum(int(n) * _UNIT[u] for n, u in _PART.findall(text))
    if seconds is None or seconds < 0 or seconds > MAX_SECONDS:
        raise DurationError(f"{field}: {str(value)[:40]!r} is not a duration")
    return seconds
