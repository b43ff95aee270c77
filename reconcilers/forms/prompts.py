"""The interactive CLI backend: one questionary prompt per element, in the order conditions allow.

Each prompt checks its value with the same `coerce` the final check uses (an error shows under the prompt
and the question stays); hidden elements (`when`) are not asked; a repeating group asks for items until the
user says no more (bounded by max_items). The whole answer set then goes through FormSession.check.
"""

from __future__ import annotations

from typing import Any

import questionary

from reconcilers.errors import StratumError
from reconcilers.forms.answers import asking_order, coerce, shown
from reconcilers.forms.model import Element
from reconcilers.forms.session import FormSession


class Cancelled(StratumError):
    """The user stopped the form (Ctrl-C, Ctrl-D): nothing was written."""


def _validator(session: FormSession, element: Element, options: tuple[str, ...] | None) -> Any:
    def check(text: str) -> bool | str:
        if text == "" and not element.required:
            return True
        if text == "":
            return session.text.get("error-required", "is required")
        _, problem = coerce(element, text, options)
        return True if problem is None else session.text.error(problem)
    return check


def _label(session: FormSession, element: Element) -> str:
    helptext = session.text.help(element)
    return session.text.prompt(element) + (f" ({helptext})" if helptext else "")


def ask_one(session: FormSession, element: Element, default: Any) -> Any:
    """One element's answer (raises Cancelled when the user stops)."""
    options = session.options().get(element.name)
    question: Any
    if element.type == "confirm":
        question = questionary.confirm(_label(session, element), default=bool(default))
    elif element.type == "select":
        labels = session.labels(element.name)
        choices = [questionary.Choice(session.text.option(element, v, labels.get(v, v)), value=v)
                   for v in options or ()]
        question = questionary.select(_label(session, element), choices=choices,
                                      default=next((c for c in choices if c.value == default), None))
    elif element.type == "multiselect":
        labels = session.labels(element.name)
        chosen = set(default or [])
        question = questionary.checkbox(_label(session, element), choices=[
            questionary.Choice(session.text.option(element, v, labels.get(v, v)), value=v, checked=v in chosen)
            for v in options or ()],
            validate=lambda picked: session.text.error(coerce(element, picked, options)[1] or "") or True)
    elif element.type == "password":
        question = questionary.password(_label(session, element), validate=_validator(session, element, options))
    else:
        question = questionary.text(_label(session, element), default="" if default is None else str(default),
                                    validate=_validator(session, element, options))
    answer = question.ask()
    if answer is None:
        raise Cancelled("the form was cancelled: nothing was written", hint="run it again when ready")
    if element.type in ("text", "number", "date", "password") and answer == "":
        return None
    return answer


def ask(session: FormSession, defaults: dict[str, Any]) -> dict[str, Any]:
    """Every shown element's answer, asked in the terminal."""
    out: dict[str, Any] = {}
    for element in asking_order(session.form.elements):
        if not shown(element, out):
            continue
        if element.type == "group":
            items: list[dict[str, Any]] = []
            prior = defaults.get(element.name) or []
            while len(items) < element.max_items:
                more = session.text.get("add-another", "add another item?") if items else \
                    session.text.get("add-item", "add an item?")
                if len(items) >= element.min_items and not questionary.confirm(
                        f"{session.text.prompt(element)}: {more}",
                        default=len(items) < len(prior)).ask():
                    break
                base = prior[len(items)] if len(items) < len(prior) and isinstance(prior[len(items)], dict) else {}
                item: dict[str, Any] = {}
                for field in asking_order(element.fields):
                    if shown(field, item):
                        item[field.name] = ask_one(session, field, base.get(field.name, field.default))
                items.append(item)
            out[element.name] = items
            continue
        value = ask_one(session, element, defaults.get(element.name))
        if value is not None:
            out[element.name] = value
    return out
