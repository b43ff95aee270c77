"""The lexical import scanner: every import found with its line, and nothing that only looks like one."""

from __future__ import annotations

import pytest

from daemon.nickel.scan import ImportRef, ScanError, scan_imports


def test_plain_imports_are_found_with_their_lines() -> None:
    """Each `import "..."` is reported with its target and 1-based line, in source order."""
    src = 'let a = import "a.ncl" in\nlet b =\n  import\n    "sub/b.json" in\n'
    src += '{ x = import "c.txt" as \'Text }\n'
    assert scan_imports(src) == [ImportRef("a.ncl", 1), ImportRef("sub/b.json", 3), ImportRef("c.txt", 5)]


def test_source_without_imports_has_none() -> None:
    """A file with no import yields an empty list."""
    assert scan_imports('{ a = 1, b = "two" }\n') == []


@pytest.mark.parametrize(
    "src",
    [
        '# import "/etc/passwd"\n{ a = 1 }',
        '{ a = "import \\"/etc/passwd\\"" }',
        '{ a = m%"\n  import "/etc/passwd"\n"% }',
        '{ a = m%%"\n  "% import "/etc/passwd" "%\n"%% }',
        "{ importer = 1, reimport = 2, import_x = 3 }",
        "{ my-import = 1, import' = 2 }",
    ],
)
def test_the_word_import_in_comments_strings_and_identifiers_is_not_an_import(src: str) -> None:
    """Comments, plain and multiline strings, and identifiers containing `import` are skipped."""
    assert scan_imports(src) == []


def test_an_import_after_a_multiline_string_is_still_found() -> None:
    """Skipping a multiline string resumes scanning right after its closing delimiter."""
    src = 'let s = m%"\n  import "no"\n"% in\nlet t = import "yes.ncl" in s\n'
    assert scan_imports(src) == [ImportRef("yes.ncl", 4)]


def test_an_import_after_a_string_with_escaped_quotes_is_still_found() -> None:
    """An escaped quote does not end a plain string early nor hide what follows it."""
    src = 'let s = "a \\" import \\"x\\" b" in\nimport "real.ncl"\n'
    assert scan_imports(src) == [ImportRef("real.ncl", 2)]


def test_a_comment_does_not_swallow_the_next_line() -> None:
    """A `#` comment ends at the end of its line."""
    assert scan_imports('# a comment\nimport "next.ncl"\n') == [ImportRef("next.ncl", 2)]


@pytest.mark.parametrize(
    "src, line",
    [
        ('let p = "/etc/passwd" in\nimport p', 2),
        ('import m%"/etc/passwd"%', 1),
        ("{ a = 1 }\n\nimport", 3),
    ],
)
def test_an_import_without_a_plain_string_literal_is_refused(src: str, line: int) -> None:
    """An import of a variable, a multiline string or nothing raises ScanError with its line."""
    with pytest.raises(ScanError) as err:
        scan_imports(src)
    assert err.value.line == line
    assert "plain string literal" in str(err.value)


@pytest.mark.parametrize("target", ["%{dir}/x.ncl", "a\\u{2f}b.ncl", "\\/etc/passwd"])
def test_escapes_and_interpolation_in_an_import_path_are_refused(target: str) -> None:
    """An import path that Nickel would rewrite (escape or interpolation) cannot be checked: refused."""
    with pytest.raises(ScanError, match="escapes or interpolation") as err:
        scan_imports(f'let dir = "/etc" in\nimport "{target}"\n')
    assert err.value.line == 2


@pytest.mark.parametrize(
    "src",
    [
        '{ a = "x %{import "/etc/hostname" as \'Text} y" }',
        '{ a = "x %%{import "/etc/hostname" as \'Text} y" }',
        '{ a = m%"x %{import "/etc/hostname" as \'Text} y"% }',
        '{ a = m%%"x %%{import "/etc/hostname" as \'Text} y"%% }',
        '{ a = m%%"x %%%{import "/etc/hostname" as \'Text} y"%% }',
        '{ a = "%{ "%{ import "/etc/hostname" as \'Text }" }" }',
        '{ a = "%{ { b = "}" }.b ++ (import "/etc/hostname" as \'Text) }" }',
        'let t-s = 1 in t-s%"%{import "/etc/hostname" as \'Text}"%',
        '{ "%{import "/etc/hostname" as \'Text}" = 1 }',
    ],
)
def test_an_import_inside_a_string_interpolation_is_found(src: str) -> None:
    """Nickel resolves an import inside `%{ }` of any string kind, so the scanner must report it."""
    assert scan_imports(src) == [ImportRef("/etc/hostname", 1)]


@pytest.mark.parametrize(
    "src",
    [
        '{ a = m%%"x %{import "/etc/hostname" as \'Text} y"%% }',
        '{ a = "x \\%{import "/etc/hostname"} y" }',
        '{ a = m%%"x "% import "/etc/hostname" "%% }',
    ],
)
def test_interpolation_lookalikes_in_strings_stay_text(src: str) -> None:
    """`%{` in a m%%"..."%% string, an escaped `\\%{`, and `"%` inside m%%"..."%% are literal text."""
    assert scan_imports(src) == []


def test_code_after_an_interpolation_is_scanned_again_as_string_text() -> None:
    """After `%{...}` closes, the rest of the string is text again, and code after the string is code."""
    src = '{ a = "%{ "b" } import \\"no\\"", c = import "yes.ncl" }'
    assert scan_imports(src) == [ImportRef("yes.ncl", 1)]


@pytest.mark.parametrize("src", ['1import "/etc/hostname"', '[1e5import "/etc/hostname"]'])
def test_an_import_right_after_a_number_is_found(src: str) -> None:
    """A number literal followed by `import` is two tokens in Nickel: the import counts."""
    assert scan_imports(src) == [ImportRef("/etc/hostname", 1)]


def test_an_enum_tag_named_import_is_not_an_import() -> None:
    """`'import` is an enum tag, not the keyword."""
    assert scan_imports("{ a = 'import }") == []
