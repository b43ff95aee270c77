"""Element `pattern`s are repo content: they match with RE2 (google-re2), in time linear in the answer, so
`(a+)+$` against a long answer cannot stall a validate, the CLI or the daemon's web thread the way Python's
backtracking `re` would. RE2 has no backreferences or lookarounds: such a pattern is a validate error."""

from __future__ import annotations

import functools
from typing import Any

MAX_PATTERN = 1000


class PatternError(ValueError):
    """A pattern RE2 does not accept (or one too long)."""


@functools.lru_cache(maxsize=512)
def compiled(pattern: str) -> Any:
    """The compiled pattern (cached); PatternError with RE2's reason when it does not compile."""
    if len(pattern) > MAX_PATTERN:
        raise PatternError(f"the pattern is over {MAX_PATTERN} characters")
    # Imported on the first pattern: a daemon whose forms declare none (or that has no forms) never loads RE2.
    import re2  # type: ignore[import-untyped]  # google-re2 ships no type information

    options = re2.Options()
    options.log_errors = False            # the reason goes into our error, not onto stderr
    try:
        return re2.compile(pattern, options)
    except re2.error as err:
        reason = err.args[0].decode() if err.args and isinstance(err.args[0], bytes) else str(err)
        raise PatternError(f"{reason} (patterns are RE2: no backreferences or lookarounds)") from err


def full_match(pattern: str, text: str) -> bool:
    """Whether all of `text` matches `pattern`."""
    return compiled(pattern).fullmatch(text) is not None
