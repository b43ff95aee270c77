"""A fast reader for the YAML that `manifest.dump_yaml` writes, with the general YAML loader as the fallback.

Opening a manifest spent about half its time in PyYAML building Python objects from a document whose shape
never varies (block mappings and sequences of short scalars). `load` reads exactly that subset and returns
what `yaml.safe_load` returns for it, or None for anything outside it, and the caller then uses the general
(bounded) YAML loader. The subset, strictly:
 - block mappings `key: value` / `key:` + a nested block, block sequences `- item` (also indentless under a
   key, and `- - ` nesting), two-space indents as written, no tabs, comments, anchors, tags or documents;
 - keys: plain scalars that YAML resolves to strings; values: plain scalars that YAML resolves to a string or
   a decimal int (decided by PyYAML's own resolver), single-quoted one-line scalars, `{}` and `[]`.
Anything else (double quotes, folded text, a key resolving to a bool, a duplicate key, nesting deeper than
MAX_DEPTH) returns None: the fast path never guesses. tests/reconcilers/test_vault_fastyaml.py checks it
against yaml.safe_load on every shape the writer emits.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

MAX_DEPTH = 32
_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_DECIMAL = re.compile(r"(?:0|[1-9][0-9]*)\Z")
_QUOTED_KEY = re.compile(r"('(?:[^']|'')*'):(?: (.*))?\Z")
# What a plain scalar may not start with (YAML indicators). A text with a non-ASCII character or an ASCII one
# PyYAML refuses or reads specially (controls, tabs, CR) is left to the general loader, which handles it.
_INDICATORS = frozenset("-?:,[]{}#&*!|>'\"%@`")
_RESOLVER = yaml.resolver.Resolver()
# First characters for which YAML has no implicit type: such a plain scalar is a string without asking.
_UNTYPED_FIRST = frozenset(chr(c) for c in range(33, 127)) - set(_RESOLVER.yaml_implicit_resolvers)


class _Miss(Exception):
    """The text is outside the subset: use the general loader."""


def _scalar(text: str, key: bool = False) -> Any:
    if text.startswith("'"):
        if len(text) < 2 or not text.endswith("'"):
            raise _Miss
        inner = text[1:-1]
        if "'" in inner.replace("''", ""):
            raise _Miss
        return inner.replace("''", "'")
    if not key and text in ("{}", "[]"):
        return {} if text == "{}" else []
    # A plain scalar as the writer emits it: no spaces, no leading indicator, not ending in `:`.
    if not text or text[0] in _INDICATORS or " " in text or text.endswith(":"):
        raise _Miss
    if text[0] in _UNTYPED_FIRST:
        return text
    tag = _RESOLVER.resolve(yaml.ScalarNode, text, (True, False))  # type: ignore[no-untyped-call]
    if tag == _STR:
        return text
    if tag == _INT and not key and _DECIMAL.match(text):
        return int(text)
    raise _Miss


def _entry(text: str) -> tuple[str, str | None] | None:
    """(key text, value text or None) of a `key: value` / `key:` line, or None when the line is not one."""
    if text.startswith("'"):
        quoted = _QUOTED_KEY.match(text)
        return (quoted.group(1), quoted.group(2)) if quoted else None
    colon = text.find(":")
    if colon <= 0:
        return None
    rest = text[colon + 1 :]
    if not rest:
        return text[:colon], None
    return (text[:colon], rest[1:]) if rest[0] == " " else None


class _Reader:
    def __init__(self, lines: list[tuple[int, str]]) -> None:
        self.lines = lines
        self.i = 0

    def peek(self) -> tuple[int, str] | None:
        return self.lines[self.i] if self.i < len(self.lines) else None

    def node(self, col: int, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise _Miss
        line = self.peek()
        if line is None or line[0] != col:
            raise _Miss
        text = line[1]
        if text == "-" or text.startswith("- "):
            return self.sequence(col, depth)
        if _entry(text) is not None:
            return self.mapping(col, depth)
        self.i += 1
        return _scalar(text)

    def sequence(self, col: int, depth: int) -> list[Any]:
        items: list[Any] = []
        while (line := self.peek()) is not None and line[0] == col and line[1].startswith("- "):
            # The item's content starts two columns right of the dash: read it as a line of its own there.
            self.lines[self.i] = (col + 2, line[1][2:])
            items.append(self.node(col + 2, depth + 1))
        # A line at this column that is not an item belongs to the mapping around an indentless sequence (its
        # caller checks it); one further right continues nothing the writer emits.
        if (line := self.peek()) is not None and line[0] > col:
            raise _Miss
        return items

    def mapping(self, col: int, depth: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        while (line := self.peek()) is not None and line[0] == col:
            entry = _entry(line[1])
            if entry is None:
                raise _Miss
            key = _scalar(entry[0], key=True)
            if not isinstance(key, str) or key in out:
                raise _Miss
            self.i += 1
            if entry[1] is not None:
                out[key] = _scalar(entry[1])
                continue
            nxt = self.peek()
            if nxt is not None and nxt[0] > col:
                out[key] = self.node(nxt[0], depth + 1)
            elif nxt is not None and nxt[0] == col and nxt[1].startswith("- "):
                out[key] = self.sequence(col, depth + 1)       # an indentless sequence, as PyYAML writes it
            else:
                raise _Miss                                     # `key:` alone is null: not the writer's
        if (line := self.peek()) is not None and line[0] > col:
            raise _Miss
        return out


def load(text: str) -> dict[str, Any] | None:
    """The document as `yaml.safe_load` would return it when `text` is in the subset, else None."""
    if not text or not text.isascii() or text.startswith(("%", "---")):
        return None
    lines: list[tuple[int, str]] = []
    for raw in text.split("\n"):
        if not raw.isprintable():                               # ASCII controls, tabs, CR: C speed, per line
            return None
        stripped = raw.lstrip(" ")
        if not stripped:
            if raw:
                return None                                     # whitespace-only lines: leave them to YAML
            continue
        lines.append((len(raw) - len(stripped), stripped.rstrip(" ")))
    if not lines or lines[0][0] != 0:
        return None
    reader = _Reader(lines)
    try:
        doc = reader.node(0, 0)
    except (_Miss, RecursionError):
        return None
    if reader.i != len(lines) or not isinstance(doc, dict):
        return None
    return doc
