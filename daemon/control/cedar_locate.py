"""Where in a Cedar policy file cedarpy's errors point.

cedarpy 4.12 reports a syntax error as a bare message ("unexpected token `}`") and a schema error by policy id
("policy0"), never with a source span, yet every problem Stratum reports must say file:line:col. So this module
finds the positions itself: a small tokenizer splits the file into statements at `;`; a syntax error is in the
first statement that fails to parse on its own, at the first token after which the parser no longer asks for more
input (found by re-parsing token prefixes); any other error points at the text it quotes, else at the policy's
`permit`/`forbid` keyword. Everything here is pure.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Sequence
from dataclasses import dataclass

_EOF = "unexpected end of input"
_TOKEN = re.compile(r'(?P<ws>\s+)|(?P<comment>//[^\n]*)|(?P<str>"(?:[^"\\]|\\.)*"?)|(?P<id>[_a-zA-Z]\w*)'
                    r"|(?P<num>[0-9]+)|(?P<op>::|==|!=|<=|>=|&&|\|\||.)", re.DOTALL | re.ASCII)


@dataclass(frozen=True, slots=True)
class Token:
    """One Cedar token: its kind (a group name of `_TOKEN`: str, id, num or op), text and offset in the file."""

    kind: str
    text: str
    start: int

    @property
    def end(self) -> int:
        """The offset just past the token."""
        return self.start + len(self.text)


class Lines:
    """Offsets into one text to 1-based line:col."""

    __slots__ = ("_starts",)

    def __init__(self, text: str) -> None:
        self._starts = [0, *(m.end() for m in re.finditer("\n", text))]

    def at(self, offset: int) -> tuple[int, int]:
        """The 1-based (line, col) of `offset`."""
        i = bisect.bisect_right(self._starts, offset) - 1
        return i + 1, offset - self._starts[i] + 1


def statements(text: str) -> list[list[Token]]:
    """The tokens of a Cedar file (without whitespace and comments; an unterminated string runs to the end), split
    after each `;` (Cedar has no other use for it outside strings). Empty statements are dropped, so the n-th
    statement is the n-th policy."""
    out: list[list[Token]] = [[]]
    for m in _TOKEN.finditer(text):
        if m.lastgroup in ("ws", "comment"):
            continue
        tok = Token(m.lastgroup or "", m.group(), m.start())
        out[-1].append(tok)
        if tok.kind == "op" and tok.text == ";":
            out.append([])
    return [s for s in out if s]


def effect_offset(stmt: Sequence[Token]) -> int:
    """The offset of a statement's `permit`/`forbid` keyword (not an annotation named so), else of its first
    token; 0 for an empty statement."""
    for i, tok in enumerate(stmt):
        if tok.kind == "id" and tok.text in ("permit", "forbid") and (i == 0 or stmt[i - 1].text != "@"):
            return tok.start
    return stmt[0].start if stmt else 0


def syntax_error_offset(text: str, stmts: Sequence[Sequence[Token]]) -> int:
    """The offset of the first syntax error in `text` (split into `stmts` by `statements`): the first statement
    that fails to parse on its own, and in it the first token after which the parser no longer wants more input.
    The end of the text when no statement fails alone."""
    for stmt in stmts:
        base = stmt[0].start
        message = _parse_error(text[base:stmt[-1].end])
        if message is None:
            continue
        if message.startswith(_EOF):
            return stmt[-1].end
        if not message.startswith(("unexpected token", "invalid token")):
            return quoted_offset(text, stmt, message)
        lo, hi = 0, len(stmt) - 1      # the whole statement fails; find the shortest failing prefix
        while lo < hi:
            mid = (lo + hi) // 2
            err = _parse_error(text[base:stmt[mid].end])
            if err is not None and not err.startswith(_EOF):
                hi = mid
            else:
                lo = mid + 1
        return stmt[lo].start
    return len(text.rstrip())


def quoted_offset(text: str, stmt: Sequence[Token], message: str) -> int:
    """The offset in a statement of what an error message quotes (`foo`, or the text after its last colon; the
    last occurrence for a "duplicate ..." message), else of the statement's effect keyword; 0 for an empty
    statement."""
    if not stmt:
        return 0
    wanted = re.findall(r"`([^`]+)`", message) + ([message.rsplit(": ", 1)[1]] if ": " in message else [])
    for text_wanted in wanted:
        for tok in stmt:
            if tok.text == text_wanted:
                return tok.start
        lo, hi = stmt[0].start, stmt[-1].end
        found = text.rfind(text_wanted, lo, hi) if message.startswith("duplicate") else text.find(text_wanted, lo, hi)
        if found >= 0:
            return found
    return effect_offset(stmt)


def _parse_error(text: str) -> str | None:
    """cedarpy's message for a text that does not parse as policies, else None."""
    import cedarpy  # loaded by policy.py's _cedar before any text gets here; not at import (~50 ms)

    try:
        cedarpy.policies_to_json_str(text)
    except ValueError as err:
        return str(err)
    return None
