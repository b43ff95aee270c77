"""Answers to a form, checked: the one validation every backend (answers file, CLI, TUI, web, AI) goes through.

`check(form, raw)` coerces each shown element's raw value to its type, applies its own constraints (required,
min/max/step, lengths, pattern, options, selected counts, group items and unique fields), then the form's
`[constraints]`. Elements hidden by `when` are dropped from the answers. Errors are per element name (group
fields as `group[2].field`), in the form's order, as plain sentences a person can act on.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from reconcilers.forms import expr
from reconcilers.forms.model import Element, Form, parse_when
from reconcilers.forms.patterns import full_match

MAX_TEXT = 4096


class Msg(str):
    """An error message in English that also carries its Fluent message id and arguments, so a backend can show
    it in the user's language (reconcilers/forms/i18n.py); as a str it is the English text."""

    id: str
    args: dict[str, Any]

    def __new__(cls, id_: str, text: str, **args: Any) -> Msg:
        """`text` (English), known to Fluent as `id_` with `args`."""
        obj = super().__new__(cls, text)
        obj.id = id_
        obj.args = args
        return obj


@dataclass(frozen=True, slots=True)
class Checked:
    """The coerced answers of the shown elements, and the errors (element -> message)."""

    answers: dict[str, Any]
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """No errors."""
        return not self.errors


def _number(value: Any) -> float | int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            try:
                return float(value.strip())
            except ValueError:
                return None
    return None


def _empty(value: Any) -> bool:
    return value is None or value == "" or value == []


def coerce(element: Element, value: Any, options: tuple[str, ...] | None = None) -> tuple[Any, str | None]:
    """`value` as the element's type, and the message when it is not acceptable (None: fine)."""
    t = element.type
    if t == "number":
        number = _number(value)
        if number is None:
            return value, Msg("error-number", "must be a number")
        if element.minimum is not None and number < element.minimum:
            return number, Msg("error-min", f"must be at least {element.minimum}", min=element.minimum)
        if element.maximum is not None and number > element.maximum:
            return number, Msg("error-max", f"must be at most {element.maximum}", max=element.maximum)
        if element.step:
            base = element.minimum if isinstance(element.minimum, (int, float)) else 0
            ratio = (number - base) / element.step
            if abs(ratio - round(ratio)) > 1e-9:
                return number, Msg("error-step",
                    f"must be in steps of {element.step:g} from {base}", step=element.step, base=base)
        return number, None
    if t == "confirm":
        if isinstance(value, bool):
            return value, None
        text = str(value).strip().lower()
        if text in ("y", "yes", "true", "1", "si", "sí", "s"):
            return True, None
        if text in ("n", "no", "false", "0"):
            return False, None
        return value, Msg("error-confirm", "must be yes or no")
    if t == "date":
        try:
            day = dt.date.fromisoformat(str(value).strip())
        except ValueError:
            return value, Msg("error-date", "must be a date as YYYY-MM-DD")
        if element.minimum is not None and day < dt.date.fromisoformat(str(element.minimum)):
            return day.isoformat(), Msg("error-date-min",
                f"must be on or after {element.minimum}", min=str(element.minimum))
        if element.maximum is not None and day > dt.date.fromisoformat(str(element.maximum)):
            return day.isoformat(), Msg("error-date-max",
                f"must be on or before {element.maximum}", max=str(element.maximum))
        return day.isoformat(), None
    allowed = options if options is not None else tuple(o.value for o in element.options)
    if t == "select":
        text = str(value)
        if allowed and text not in allowed:
            return text, Msg("error-options",
                f"must be one of {', '.join(allowed[:20])}", options=", ".join(allowed[:20]))
        return text, None
    if t == "multiselect":
        items = value if isinstance(value, list) else [v.strip() for v in str(value).split(",") if v.strip()]
        items = [str(v) for v in items]
        unknown = [v for v in items if allowed and v not in allowed]
        if unknown:
            return items, Msg("error-option",
                f"{unknown[0]!r} is not one of {', '.join(allowed[:20])}",
                value=unknown[0],
                options=", ".join(allowed[:20]))
        if element.min_selected is not None and len(items) < element.min_selected:
            return items, Msg("error-min-selected", f"choose at least {element.min_selected}", min=element.min_selected)
        if element.max_selected is not None and len(items) > element.max_selected:
            return items, Msg("error-max-selected", f"choose at most {element.max_selected}", max=element.max_selected)
        return items, None
    # text and password
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        return value, Msg("error-text", "must be text")
    text = str(value)
    limit = min(element.max_length or MAX_TEXT, MAX_TEXT)
    if len(text) > limit:
        return text, Msg("error-max-length", f"must be at most {limit} characters", max=limit)
    if element.min_length is not None and len(text) < element.min_length:
        return text, Msg("error-min-length",
            f"must be at least {element.min_length} characters", min=element.min_length)
    if element.pattern and not full_match(element.pattern, text):
        return text, Msg("error-pattern", f"must match {element.pattern}", pattern=element.pattern)
    return text, None


def shown(element: Element, answers: Mapping[str, Any]) -> bool:
    """Whether `element` is asked, given the answers so far."""
    node = parse_when(element)
    return node is None or expr.holds(node, answers)


def _group(element: Element, value: Any, errors: dict[str, str],
           options: Mapping[str, tuple[str, ...]]) -> list[dict[str, Any]]:
    items = value if isinstance(value, list) else []
    if value is not None and not isinstance(value, list):
        errors[element.name] = Msg("error-items", "must be a list of items")
        return []
    if len(items) < element.min_items:
        errors[element.name] = Msg("error-min-items",
            f"needs at least {element.min_items} item(s)", min=element.min_items)
    if len(items) > element.max_items:
        errors[element.name] = Msg("error-max-items",
            f"takes at most {element.max_items} item(s)", max=element.max_items)
        items = items[:element.max_items]
    out: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        if not isinstance(item, Mapping):
            errors[f"{element.name}[{i + 1}]"] = Msg("error-item", "must be a table of fields")
            continue
        sub = _fields(element.fields, item, f"{element.name}[{i + 1}].", errors, options)
        out.append(sub)
    for key in element.unique:
        seen: dict[Any, int] = {}
        for i, item in enumerate(out):
            v = item.get(key)
            if v is None:
                continue
            marker = repr(v)
            if marker in seen:
                errors[f"{element.name}[{i + 1}].{key}"] = Msg("error-unique",
                    f"repeats item {seen[marker] + 1}'s {key} ({v})", item=seen[marker] + 1, field=key, value=str(v))
            seen.setdefault(marker, i)
    return out


def _fields(elements: tuple[Element, ...], raw: Mapping[str, Any], prefix: str, errors: dict[str, str],
            options: Mapping[str, tuple[str, ...]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for element in asking_order(elements):
        if not shown(element, out):
            continue
        value = raw.get(element.name)
        key = prefix + element.name
        if element.type == "group":
            out[element.name] = _group(element, value, errors, options)
            continue
        if _empty(value):
            if element.required and element.type != "confirm":
                errors[key] = Msg("error-required", "is required")
            elif element.type == "confirm":
                out[element.name] = False
            continue
        coerced, problem = coerce(element, value, options.get(element.name))
        if problem:
            errors[key] = problem
        else:
            out[element.name] = coerced
    order = [e.name for e in elements]
    return {k: out[k] for k in sorted(out, key=order.index)}


def asking_order(elements: tuple[Element, ...]) -> list[Element]:
    """The elements in the form's order, except that an element comes after every element its `when` reads
    (the form's checks refuse cycles, so the order exists)."""
    by_name = {e.name: e for e in elements}
    done: set[str] = set()
    out: list[Element] = []

    def visit(element: Element, depth: int) -> None:
        if element.name in done or depth > len(elements):
            return
        node = parse_when(element)
        for name, _ in expr.names(node) if node is not None else []:
            if name in by_name and name != element.name:
                visit(by_name[name], depth + 1)
        if element.name not in done:
            done.add(element.name)
            out.append(element)
    for element in elements:
        visit(element, 0)
    return out


def check(form: Form, raw: Mapping[str, Any], options: Mapping[str, tuple[str, ...]] | None = None) -> Checked:
    """Validate `raw` answers against `form` (`options`: values of `options_from` elements, resolved)."""
    errors: dict[str, str] = {}
    unknown = sorted(set(raw) - {e.name for e in form.elements})
    for name in unknown[:5]:
        errors[name] = Msg("error-unknown", "is not a question of this form")
    answers = _fields(form.elements, raw, "", errors, options or {})
    if not errors:
        for c in form.constraints:
            if not expr.holds(expr.parse(c.check), answers):
                errors[f"constraint {c.name}"] = Msg(f"constraint-{c.name}", c.message)
    return Checked(answers, errors)
