"""A lexical scan of Nickel source for its imports, so nothing outside the commit is ever read.

Nickel resolves `import "..."` on disk, absolute paths included: `import "/etc/shadow" as 'Text` would read the
host. Before any evaluation, every import in every file is found here and must be a plain string literal
naming a file of the same commit (or of Stratum's contract library). Anything else refuses the file.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ImportRef:
    """One `import "target"` found in a file, with its 1-based line."""

    target: str
    line: int


class ScanError(ValueError):
    """The source has an import Stratum cannot check (not a plain string literal)."""

    def __init__(self, message: str, line: int) -> None:
        self.line = line
        super().__init__(message)


def _skip_string(src: str, i: int) -> int:
    """Index just past the plain string starting at src[i] == '"'."""
    i += 1
    while i < len(src):
        ch = src[i]
        if ch == "\\":
            i += 2
            continue
        if ch == '"':
            return i + 1
        i += 1
    return i


def _skip_multiline(src: str, i: int) -> int:
    """Index just past a multiline string m%"..."% (or m%%"..."%% ...) starting at src[i] == 'm'."""
    j = i + 1
    while j < len(src) and src[j] == "%":
        j += 1
    closing = '"' + "%" * (j - i - 1)
    end = src.find(closing, j + 1)
    return len(src) if end < 0 else end + len(closing)


def _is_ident(ch: str) -> bool:
    return ch.isalnum() or ch in "_'-"


def scan_imports(src: str) -> list[ImportRef]:
    """Every import of `src`; raises ScanError when an import is not followed by a plain string literal."""
    out: list[ImportRef] = []
    i, n = 0, len(src)
    while i < n:
        ch = src[i]
        if ch == "#":
            nl = src.find("\n", i)
            i = n if nl < 0 else nl
        elif ch == '"':
            i = _skip_string(src, i)
        elif ch == "m" and src.startswith('m%', i) and (i == 0 or not _is_ident(src[i - 1])):
            j = i + 1
            while j < n and src[j] == "%":
                j += 1
            if j < n and src[j] == '"':
                i = _skip_multiline(src, i)
            else:
                i += 1
        elif src.startswith("import", i) and (i == 0 or not _is_ident(src[i - 1])) and (
                i + 6 >= n or not _is_ident(src[i + 6])):
            line = src.count("\n", 0, i) + 1
            j = i + 6
            while j < n and src[j] in " \t\r\n":
                j += 1
            if j >= n or src[j] != '"':
                raise ScanError("an import must name a file with a plain string literal", line)
            end = _skip_string(src, j)
            literal = src[j + 1:end - 1]
            if "\\" in literal or "%{" in literal:
                raise ScanError("an import path must not contain escapes or interpolation", line)
            out.append(ImportRef(literal, line))
            i = end
        else:
            i += 1
    return out
