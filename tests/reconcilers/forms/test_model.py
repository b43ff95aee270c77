"""Form files: shape, conditions, cycles and defaults are checked with file:line; answers are checked the same
way for every backend (types, bounds, `when`, constraints, repeating groups)."""

from __future__ import annotations

import pytest

from reconcilers.forms import expr
from reconcilers.forms.answers import check
from reconcilers.forms.checks import check_form
from reconcilers.forms.model import FormError, parse_form

HEAD = '[form]\nname = "svc"\ntarget = "infra/svc.ncl"\ntemplate = "t.j2"\n'


def problems(text: str) -> list[str]:
    """`line: message` of every problem of the form `text`."""
    try:
        form = parse_form("forms/svc.toml", text)
    except FormError as err:
        return [f"{err.line}: {err}"]
    return [f"{p.line}: {p.message}" for p in check_form(form)]


def test_an_unknown_field_in_when_is_located_at_its_line() -> None:
    """`when` naming no element of the form is an error at the `when` line, naming the field."""
    text = HEAD + '[[elements]]\nname = "a"\n\n[[elements]]\nname = "b"\nprompt = "B"\nwhen = "a == 1 and zz > 2"\n'
    assert problems(text) == ["11: element b: when reads 'zz', which is not an element of this form"]


def test_a_cycle_between_conditions_is_named() -> None:
    """a shown when b, b shown when a: a validate error naming the cycle."""
    text = HEAD + '[[elements]]\nname = "a"\nwhen = "b == 1"\n[[elements]]\nname = "b"\nwhen = "a == 1"\n'
    found = problems(text)
    assert len(found) == 1 and "conditions form a cycle" in found[0]
    assert found[0].startswith(("7: ", "10: ")) and "a" in found[0] and "b" in found[0]


def test_a_default_failing_its_own_constraint_is_an_error() -> None:
    """A number default over its max, a select default outside its options: errors at the element's line."""
    text = HEAD + ('[[elements]]\nname = "port"\ntype = "number"\nmax = 100\ndefault = 8080\n'
                   '[[elements]]\nname = "size"\ntype = "select"\noptions = ["s", "m"]\ndefault = "xl"\n')
    assert problems(text) == ["5: element port: the default 8080 must be at most 100",
                              "10: element size: the default 'xl' must be one of s, m"]


def test_an_unknown_key_and_a_bad_type_are_located() -> None:
    """A typo in an element key is named with its line; so is an unknown element type."""
    assert problems(HEAD + '[[elements]]\nname = "a"\npromt = "x"\n') == [
        "7: unknown key `promt` in an element (known: " + ", ".join(sorted(
            {"name", "type", "prompt", "placeholder", "help", "default", "default_env", "default_nickel",
             "required", "when", "min", "max", "step", "min_length", "max_length", "pattern", "options",
             "options_from", "min_selected", "max_selected", "fields", "min_items", "max_items", "unique"})) + ")"]
    assert problems(HEAD + '[[elements]]\nname = "a"\ntype = "colour"\n')[0].startswith("7: element a: unknown type")


def test_a_bad_expression_reports_its_column() -> None:
    """A condition that does not parse says where (column) and never reaches eval."""
    text = HEAD + '[[elements]]\nname = "a"\nwhen = "a == __import__(1)"\n'
    assert problems(text)[0].startswith("7: element a: when: ")
    with pytest.raises(expr.ExprError) as err:
        expr.parse("a == (1")
    assert err.value.column == 8


@pytest.mark.parametrize(("condition", "answers", "expected"), [
    ('size == "m" and n > 2', {"size": "m", "n": 3}, True),
    ('size != "m" or n >= 3', {"size": "m", "n": 3}, True),
    ('name startswith "web" and name endswith "01"', {"name": "web-01"}, True),
    ('tags contains "db"', {"tags": ["db", "x"]}, True),
    ('region in ["fra1", "ams3"]', {"region": "nyc1"}, False),
    ("not enabled", {}, True),
    ("n < 3", {}, False),
    ("len(items) >= 2", {"items": [1, 2]}, True),
])
def test_conditions_evaluate(condition: str, answers: dict[str, object], expected: bool) -> None:
    """Each operator of the grammar; a missing element reads as null and compares false."""
    assert expr.holds(expr.parse(condition), answers) is expected


GROUP_FORM = HEAD + '''
[[elements]]
name = "name"
pattern = "[a-z]+"

[[elements]]
name = "kind"
type = "select"
options = ["plain", "custom"]

[[elements]]
name = "command"
when = "kind == \\"custom\\""

[[elements]]
name = "ports"
type = "group"
min_items = 1
max_items = 3
unique = ["port"]

  [[elements.fields]]
  name = "port"
  type = "number"
  min = 1
  max = 65535

  [[elements.fields]]
  name = "public"
  type = "confirm"
  required = false

[constraints]
few = { check = "len(ports) <= 2 or kind == \\"custom\\"", message = "three ports need a custom kind" }
'''


def test_answers_hidden_by_when_are_dropped_and_required_ones_enforced() -> None:
    """`command` is asked only for kind custom; then it is required."""
    form = parse_form("forms/svc.toml", GROUP_FORM)
    assert check_form(form) == []
    plain = check(form, {"name": "web", "kind": "plain", "command": "x", "ports": [{"port": "80"}]})
    assert plain.ok and plain.answers == {"name": "web", "kind": "plain", "ports": [{"port": 80, "public": False}]}
    custom = check(form, {"name": "web", "kind": "custom", "ports": [{"port": 80}]})
    assert custom.errors == {"command": "is required"}


def test_repeating_groups_check_items_unique_fields_and_constraints() -> None:
    """Too few items, a repeated unique field, a field out of range, and a cross-field constraint."""
    form = parse_form("forms/svc.toml", GROUP_FORM)
    assert check(form, {"name": "web", "kind": "plain", "ports": []}).errors == {"ports": "needs at least 1 item(s)"}
    dup = check(form, {"name": "web", "kind": "plain", "ports": [{"port": 80}, {"port": 80}]})
    assert dup.errors == {"ports[2].port": "repeats item 1's port (80)"}
    assert check(form, {"name": "web", "kind": "plain", "ports": [{"port": 0}]}).errors == {
        "ports[1].port": "must be at least 1"}
    three = [{"port": 1}, {"port": 2}, {"port": 3}]
    assert check(form, {"name": "web", "kind": "plain", "ports": three}).errors == {
        "constraint few": "three ports need a custom kind"}
    assert check(form, {"name": "Web!", "kind": "plain", "ports": three[:1]}).errors == {"name": "must match [a-z]+"}


def test_a_pattern_cannot_stall_a_check() -> None:
    """`(a+)+$` against a long non-matching answer: refused at once (RE2, linear), where Python's re would
    backtrack for longer than the universe; the default is checked the same way at validate."""
    text = HEAD + '[[elements]]\nname = "a"\npattern = "(a+)+$"\ndefault = "' + "a" * 4000 + '!"\n'
    found = problems(text)
    assert len(found) == 1 and found[0].startswith("5: element a: the default") and "must match (a+)+$" in found[0]


def test_a_pattern_re2_cannot_run_is_a_validate_error() -> None:
    """A backreference: located error naming RE2's reason."""
    found = problems(HEAD + '[[elements]]\nname = "a"\npattern = "(a)\\\\1"\n')
    assert len(found) == 1 and found[0].startswith("5: element a: pattern does not compile: invalid escape")


def test_a_long_chain_of_conditions_is_refused_not_recursed() -> None:
    """400 `or`s fit in 2,000 characters and would recurse 400 deep when evaluated: refused with a column."""
    with pytest.raises(expr.ExprError, match="more than 128 operators"):
        expr.parse(" or ".join(["a"] * 400))
    assert expr.holds(expr.parse(" or ".join(["a"] * 100)), {"a": True})


def test_deeply_nested_toml_is_a_located_problem_not_a_crash() -> None:
    """100,000 `[`: tomllib recurses past Python's limit; the form is refused with a message instead."""
    assert problems("a = " + "[" * 100_000) == ["0: TOML: arrays or tables nested too deeply"]


@pytest.mark.parametrize(("target", "message"), [
    ("secrets/{name}.ncl", "target secrets/{name}.ncl must be a .ncl file under infra/"),
    ("infra/../{name}.ncl", "target infra/../{name}.ncl must be a .ncl file under infra/"),
    ("infra/{nom}.ncl", "target infra/{nom}.ncl names {nom}, which is not an element"),
])
def test_a_target_outside_infra_or_naming_no_element_is_refused(target: str, message: str) -> None:
    """The target is checked at validate, before anyone runs the form."""
    text = HEAD.replace('"infra/svc.ncl"', f'"{target}"') + '[[elements]]\nname = "name"\n'
    assert problems(text) == [f"0: {message}"]
