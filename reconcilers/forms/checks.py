"""What `stratum validate` checks of a form file beyond its shape (model.py): conditions and defaults.

1. Every `when` and every `[constraints]` check parses, and reads only elements of the form (an unknown name
   is an error at the line of the `when`, with its column).
2. Conditions do not form a cycle (a shows when b, b shows when a): the cycle is named.
3. A literal `default` passes its own element's constraints (type, bounds, options, pattern).
4. Element names are unique; `unique` of a group names its fields; options_from is only on selects.
"""

from __future__ import annotations

import graphlib
import re

from reconcilers.forms import answers, expr
from reconcilers.forms.model import Element, Form
from reconcilers.forms.patterns import PatternError, compiled
from reconcilers.records import Problem


def _problem(form: Form, message: str, line: int, col: int = 0, hint: str = "") -> Problem:
    return Problem(message, form.path, line, col, "forms", hint)


def _check_expression(form: Form, text: str, line: int, known: set[str], what: str) -> tuple[list[Problem], set[str]]:
    try:
        node = expr.parse(text)
    except expr.ExprError as err:
        return [_problem(form, f"{what}: {err}", line, err.column,
                         "use == != > < >= <= contains startswith endswith in, and/or/not, quoted strings")], set()
    out: list[Problem] = []
    read: set[str] = set()
    for name, column in expr.names(node):
        if name not in known:
            out.append(_problem(form, f"{what} reads {name!r}, which is not an element of this form", line, column,
                                f"elements: {', '.join(sorted(known)) or 'none'}"))
        read.add(name)
    return out, read


def _check_element(form: Form, element: Element, known: set[str]) -> list[Problem]:
    out: list[Problem] = []
    if element.options_from and element.type not in ("select", "multiselect"):
        out.append(_problem(form, f"element {element.name}: options_from is only for select and multiselect",
                            element.line))
    if element.type in ("select", "multiselect") and not element.options and not element.options_from:
        out.append(_problem(form, f"element {element.name}: a {element.type} needs options or options_from",
                            element.line))
    if element.pattern:
        try:
            compiled(element.pattern)
        except PatternError as err:
            out.append(_problem(form, f"element {element.name}: pattern does not compile: {err}", element.line))
            return out
    if element.type == "group":
        names = {f.name for f in element.fields}
        out += [_problem(form, f"group {element.name}: unique names {u!r}, not one of its fields", element.line)
                for u in element.unique if u not in names]
        for sub in element.fields:
            out += _check_element(form, sub, names)
            if sub.when:
                out += _check_expression(form, sub.when, sub.when_line, names, f"element {sub.name}: when")[0]
    elif element.default is not None and not element.options_from:
        _, problem = answers.coerce(element, element.default)
        if problem:
            out.append(_problem(form, f"element {element.name}: the default {element.default!r} {problem}",
                                element.line, hint="change the default or the element's constraints"))
    return out


def check_form(form: Form) -> list[Problem]:
    """Every problem of `form` beyond its shape, located."""
    out: list[Problem] = []
    known: set[str] = set()
    for element in form.elements:
        if element.name in known:
            out.append(_problem(form, f"element {element.name} is defined twice", element.line))
        known.add(element.name)
    graph: dict[str, set[str]] = {}
    for element in form.elements:
        out += _check_element(form, element, known)
        if element.when:
            problems, read = _check_expression(form, element.when, element.when_line, known,
                                               f"element {element.name}: when")
            out += problems
            graph[element.name] = read & known
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as err:
        cycle = list(err.args[1])
        first = form.element(cycle[0])
        out.append(_problem(form, "conditions form a cycle: " + " -> ".join(cycle) + " (each `when` reads the next)",
                            first.when_line if first is not None else 0,
                            hint="an element cannot be shown depending on itself; break the cycle"))
    for c in form.constraints:
        out += _check_expression(form, c.check, c.line, known, f"constraint {c.name}")[0]
    return out + _check_target(form, known)


def _check_target(form: Form, known: set[str]) -> list[Problem]:
    """The target names known elements and, filled in, is a .ncl file under infra/ (no empty or dot parts)."""
    out: list[Problem] = []
    for name in re.findall(r"\{([^}]*)\}", form.target):
        if name not in known:
            out.append(_problem(form, f"target {form.target} names {{{name}}}, which is not an element", 0))
    parts = re.sub(r"\{[^}]*\}", "x", form.target).split("/")
    if parts[0] != "infra" or not form.target.endswith(".ncl") or any(p in ("", ".", "..") for p in parts):
        out.append(_problem(form, f"target {form.target} must be a .ncl file under infra/", 0,
                            hint='for example target = "infra/services/{name}.ncl"'))
    return out
