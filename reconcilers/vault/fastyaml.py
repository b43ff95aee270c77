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
# On an ASCII text, the bytes str.isprintable accepts (no controls, tab or DEL), plus the line breaks we split
# on. bytes.translate deleting them leaves nothing on a clean text: one C pass, several times faster than
# isprintable per line or a regex.
_PRINTABLE = bytes(range(0x20, 0x7F)) + b"\n"
# First characters of a plain scalar that is a string without asking the resolver and is no indicator.
_PLAIN_FIRST = _UNTYPED_FIRST - _INDICATORS
# Letters whose only implicit types are bool and null, every form of which (`false`, `NULL`, ...) has at most
# 5 characters: a longer plain scalar starting with one is a string (base64 text often starts so). Built from
# the resolver's own table, so a letter it gives another type never gets in (tests check the premise).
_WORD_TYPES = frozenset({"tag:yaml.org,2002:bool", "tag:yaml.org,2002:null"})
_WORD_FIRST = frozenset(
    ch for ch, found in _RESOLVER.yaml_implicit_resolvers.items()
    if ch and ch.isascii() and ch.isalpha() and {tag for tag, _ in found} <= _WORD_TYPES
)
_WORD_MAX = 5
_KEYS: dict[str, str] = {}          # key text -> key: keys recur in every manifest (db, password, stratum, ...)
_KEYS_MAX = 4096


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
    if text[0] in _UNTYPED_FIRST or (text[0] in _WORD_FIRST and len(text) > _WORD_MAX):
        return text
    if not key and _DECIMAL.match(text):
        return int(text)        # YAML 1.1 reads `0` and `[1-9][0-9]*` as that int, nothing else (tests check)
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
    # `lines` ends with the sentinel (-1, ""): its column matches no block, so loops need no bounds checks.
    def __init__(self, lines: list[tuple[int, str]]) -> None:
        self.lines = lines
        self.i = 0

    def node(self, col: int, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise _Miss
        line_col, text = self.lines[self.i]
        if line_col != col:
            raise _Miss
        if text == "-" or text.startswith("- "):
            return self.sequence(col, depth)
        if _entry(text) is not None:
            return self.mapping(col, depth)
        self.i += 1
        return _scalar(text)

    def sequence(self, col: int, depth: int) -> list[Any]:
        items: list[Any] = []
        lines = self.lines
        while (line := lines[self.i])[0] == col and line[1].startswith("- "):
            # The item's content starts two columns right of the dash: read it as a line of its own there.
            lines[self.i] = (col + 2, line[1][2:])
            items.append(self.node(col + 2, depth + 1))
        # A line at this column that is not an item belongs to the mapping around an indentless sequence (its
        # caller checks it); one further right continues nothing the writer emits.
        if lines[self.i][0] > col:
            raise _Miss
        return items

    def mapping(self, col: int, depth: int) -> dict[str, Any]:
        # The hot loop of opening a manifest: lookups are hoisted into locals, the common cases inlined.
        out: dict[str, Any] = {}
        lines, keys, plain_first = self.lines, _KEYS, _PLAIN_FIRST
        i = self.i
        while (line := lines[i])[0] == col:
            text = line[1]
            value: str | None
            colon = text.find(":")
            # `key: value` with a plain key, inlined (what _entry does for it): the common line of a manifest.
            if colon > 0 and text[0] != "'" and len(text) > colon + 1 and text[colon + 1] == " ":
                key_text, value = text[:colon], text[colon + 2:]
            else:
                entry = _entry(text)
                if entry is None:
                    raise _Miss
                key_text, value = entry
            key = keys.get(key_text)
            if key is None:
                key = _scalar(key_text, key=True)
                if not isinstance(key, str):
                    raise _Miss
                if len(keys) < _KEYS_MAX:                       # bounded: a repo's key names, not its values
                    keys[key_text] = key
            if key in out:
                raise _Miss
            i += 1
            if value is not None:
                # A plain string needing no resolver (an ENC[...] value): what _scalar returns, without the call.
                if value and value[0] in plain_first and " " not in value and value[-1] != ":":
                    out[key] = value
                else:
                    out[key] = _scalar(value)
                continue
            nxt_col, nxt_text = lines[i]
            self.i = i
            if nxt_col > col:
                out[key] = self.node(nxt_col, depth + 1)
            elif nxt_col == col and nxt_text.startswith("- "):
                out[key] = self.sequence(col, depth + 1)       # an indentless sequence, as PyYAML writes it
            else:
                raise _Miss                                     # `key:` alone is null: not the writer's
            i = self.i
        self.i = i
        if lines[i][0] > col:
            raise _Miss
        return out


def load(text: str) -> dict[str, Any] | None:
    """The document as `yaml.safe_load` would return it when `text` is in the subset, else None."""
    if not text or not text.isascii() or text.startswith(("%", "---")) \
            or text.encode().translate(None, _PRINTABLE):
        return None                                             # controls, tabs, CR: one C scan of the text
    lines: list[tuple[int, str]] = []
    append = lines.append
    for raw in text.split("\n"):
        if not raw:
            continue
        stripped = raw.lstrip(" ")
        if not stripped:
            return None                                         # whitespace-only lines: leave them to YAML
        if stripped[-1] == " ":
            stripped = stripped.rstrip(" ")
        append((len(raw) - len(stripped), stripped))
    if not lines or lines[0][0] != 0:
        return None
    append((-1, ""))                                            # the sentinel (see _Reader)
    reader = _Reader(lines)
    try:
        doc = reader.node(0, 0)
    except (_Miss, RecursionError):
        return None
    if reader.i != len(lines) - 1 or not isinstance(doc, dict):
        return None
    return doc
