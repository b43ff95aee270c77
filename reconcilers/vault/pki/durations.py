"""Vault-style durations: an integer of seconds, or "72h", "30m", "1h30m", "10d", "45s"."""

from __future__ import annotations

import re

from reconcilers.vault.pki.errors import PkiError

_PART = re.compile(r"(\d+)([smhd])")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_SECONDS = 100 * 365 * 86400        # a bound: no duration beyond a century


def parse_duration(value: object, field: str) -> int:
    """Seconds in `value` (int, digit string, or units s/m/h/d); a located error names the field otherwise."""
    seconds: int | None = None
    if isinstance(value, bool):
        seconds = None
    elif isinstance(value, int):
        seconds = value
    elif isinstance(value, str):
        text = value.strip()
        if text.isdigit():
            seconds = int(text)
        elif text and len(text) <= 32 and _PART.sub("", text) == "":
            seconds = sum(int(n) * _UNIT[u] for n, u in _PART.findall(text))
    if seconds is None or seconds < 0 or seconds > MAX_SECONDS:
        raise PkiError(f"{field}: {value!r} is not a duration",
                       hint='give seconds or a duration such as "720h", "30m" or "10d"')
    return seconds
