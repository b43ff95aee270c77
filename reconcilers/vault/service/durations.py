"""Vault durations ("90", "90s", "15m", "1h30m", "7d", or seconds as a number) and Vault's time format."""

from __future__ import annotations

import re
import time
from typing import Any

from reconcilers.vault.service.errors import BadRequest

_PART = re.compile(r"(\d+)(ms|s|m|h|d)")
_UNIT = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_SECONDS = 10 * 365 * 86400


def seconds(value: Any, field: str) -> int:
    """`value` as whole seconds; BadRequest naming `field` when it is not a duration."""
    if value is None or value == "":
        return 0
    if isinstance(value, bool):
        raise BadRequest(f"{field}: expected a duration such as 30m or 3600, got {value!r}")
    if isinstance(value, int | float) or (isinstance(value, str) and value.isdigit()):
        total = float(value)
    elif isinstance(value, str) and value and _PART.sub("", value) == "":
        total = sum(int(n) * _UNIT[u] for n, u in _PART.findall(value))
    else:
        raise BadRequest(f"{field}: expected a duration such as 30m or 3600, got {str(value)[:40]!r}")
    if not 0 <= total <= MAX_SECONDS:
        raise BadRequest(f"{field}: {value!r} is out of range (0 to 10 years)")
    return int(total)


def rfc3339(ts: float) -> str:
    """Vault's timestamps: UTC with microseconds."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1e6):06d}Z"
