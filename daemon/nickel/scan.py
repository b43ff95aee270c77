"""A lexical scan of Nickel source for its imports, so nothing outside the commit is ever read.

Nickel resolves `import "..."` on disk, absolute paths included: `import "/etc/shadow" as 'Text` would read the
host. Before any evaluation, every import in every file is found here and must be a plain string literal
naming a file of the same commit (or of Stratum's contract library). Anything else refuses the file.

The scan follows Nickel's lexer closely enough to never miss an import: comments, plain strings, multiline
strings (`m%"..."%`, `m%%"..."%%`) and symbolic strings (`tag-s%"..."%`) are skipped as text, but the code
inside their interpolations (`%{ ... }`, nested to any depth) is scanned like any other code, since Nickel
resolves an import written there too (`"%{import "/etc/hostname" as 'Text}"`).
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


class NestingError(ScanError):
    """The source nests brackets deeper than Nickel's recursive parser survives (it dies of a stack overflow
    near 1,300 levels, with no message): refused before evaluation, at the line where the cap is passed."""


MAX_NESTING = 256


def _openers(src: str) -> int:
    """An upper bound of the bracket nesting depth: every opening bracket in the text, strings included."""
    return src.count("(") + src.count("[") + src.count("{")


def data_nesting_error(src: str, limit: int = MAX_NESTING, quotes: str = '"') -> NestingError | None:
    """For JSON or TOML text imported by Nickel: the first point where `[`/`{` nest over `limit` (strings
    delimited by `quotes` and `#` comments skipped), or None."""
    if _openers(src) <= limit:
        return None
    depth, i, n = 0, 0, len(src)
    while i < n:
        ch = src[i]
        if ch in quotes:
            end = src.find(ch, i + 1)
            while ch == '"' and end > 0 and _escaped(src, end):
                end = src.find(ch, end + 1)
            i = n if end < 0 else end + 1
            continue
        if ch == "#":
            nl = src.find("\n", i)
            i = n if nl < 0 else nl
            continue
        if ch in "[{":
            depth += 1
            if depth > limit:
                return NestingError(f"nested over {limit} levels deep", src.count("\n", 0, i) + 1)
        elif ch in "]}" and depth:
            depth -= 1
        i += 1
    return None


def _escaped(src: str, i: int) -> bool:
    """True when src[i] is preceded by an odd number of backslashes."""
    j = i
    while j > 0 and src[j - 1] == "\\":
        j -= 1
    return (i - j) % 2 == 1


def _skip_string(src: str, i: int) -> int:
    """Index just past the plain string starting at src[i] == '"' (for an import's own literal)."""
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


def _is_ident_start(ch: str) -> bool:
    return ch.isascii() and (ch.isalpha() or ch == "_")


def _is_ident(ch: str) -> bool:
    return ch.isascii() and (ch.isalnum() or ch in "_'-")


def _percents(src: str, i: int) -> int:
    """How many `%` start at src[i]."""
    j = i
    while j < len(src) and src[j] == "%":
        j += 1
    return j - i


def _skip_number(src: str, i: int) -> int:
    """Index just past the number literal starting at src[i] (a digit)."""
    n = len(src)
    while i < n and (src[i].isdigit() or src[i] in "._"):
        i += 1
    if i < n and src[i] in "eE":
        j = i + 1
        if j < n and src[j] in "+-":
            j += 1
        if j < n and src[j].isdigit():
            while j < n and src[j].isdigit():
                j += 1
            i = j
    return i


def _import_at(src: str, i: int, out: list[ImportRef]) -> int:
    """Record the import whose keyword ends at src[i]; returns the index after its literal."""
    line = src.count("\n", 0, i) + 1
    n = len(src)
    j = i
    while j < n and src[j] in " \t\r\n":
        j += 1
    if j >= n or src[j] != '"':
        raise ScanError("an import must name a file with a plain string literal", line)
    end = _skip_string(src, j)
    literal = src[j + 1:end - 1]
    if "\\" in literal or "%{" in literal:
        raise ScanError("an import path must not contain escapes or interpolation", line)
    out.append(ImportRef(literal, line))
    return end


_CODE = -1


def scan_imports(src: str, max_depth: int = MAX_NESTING) -> list[ImportRef]:
    """Every import of `src`; raises ScanError when an import is not followed by a plain string literal, and
    NestingError when brackets (and interpolations) in code nest over `max_depth` levels."""
    deep = _openers(src) + src.count("%{") > max_depth
    if "import" not in src and not deep:
        return []  # exact: without the substring there is no import keyword, and no deep nesting
    depth = 0
    out: list[ImportRef] = []
    # The context stack, one [width, braces] per level: width _CODE for code (the bottom level and each
    # interpolation, with its open braces), else a string whose delimiters carry `width` `%` (0: "...").
    stack: list[list[int]] = [[_CODE, 0]]
    i, n = 0, len(src)
    while i < n:
        frame = stack[-1]
        width = frame[0]
        ch = src[i]
        if width != _CODE:
            if width == 0 and ch == "\\":
                i += 2
            elif ch == '"':
                k = _percents(src, i + 1)
                if width == 0 or k >= width:
                    stack.pop()
                    i += 1 + (k if width else 0)
                else:
                    i += 1 + k
            elif ch == "%":
                k = _percents(src, i)
                if i + k < n and src[i + k] == "{" and k >= max(width, 1):
                    stack.append([_CODE, 0])
                    depth += 1
                    i += k + 1
                else:
                    i += k
            else:
                i += 1
            continue
        if ch == "#":
            nl = src.find("\n", i)
            i = n if nl < 0 else nl
        elif ch == '"':
            stack.append([0, 0])
            i += 1
        elif ch in "{([":
            if ch == "{":
                frame[1] += 1
            depth += 1
            if deep and depth > max_depth:
                raise NestingError(f"brackets nest over {max_depth} levels deep", src.count("\n", 0, i) + 1)
            i += 1
        elif ch == "}":
            if frame[1] == 0 and len(stack) > 1:
                stack.pop()                                   # the end of an interpolation
                depth -= 1
            elif frame[1] > 0:
                frame[1] -= 1
                depth -= 1
            i += 1
        elif ch in ")]":
            depth = max(depth - 1, 0)
            i += 1
        elif ch.isdigit():
            i = _skip_number(src, i)
        elif ch == "'" and i + 1 < n and _is_ident_start(src[i + 1]):
            j = i + 1                                         # an enum tag: 'import is not the keyword
            while j < n and _is_ident(src[j]):
                j += 1
            i = j
        elif _is_ident_start(ch):
            j = i
            while j < n and _is_ident(src[j]):
                j += 1
            word = src[i:j]
            k = _percents(src, j)
            if word == "import":
                i = _import_at(src, j, out)
            elif k and j + k < n and src[j + k] == '"' and (word == "m" or word.endswith("-s")):
                stack.append([k, 0])                          # m%"...", tag-s%"...": multiline strings
                i = j + k + 1
            else:
                i = j
        else:
            i += 1
    return out
