"""Forms in the user's language: Fluent bundles (`fluent.runtime`).

A form lists its `locales`; its texts live in `forms/locales/<locale>/<form>.ftl` of the repository:

    form-title = Un nuevo servicio local
    name-prompt = Nombre del servicio
    name-help = Letras minúsculas, cifras y guiones.
    runtime-option-python = El http.server de Python
    constraint-workers_fit_port = más de 16 procesos necesitan su propio puerto

The checks' own messages (`error-min`, `error-required`, ...) ship with Stratum in English and Spanish
(BUILTIN below). A message missing in a bundle falls back to the form's own English text. The locale is
`--locale`, else the language of `LANG` (es_ES.UTF-8 -> es), else English.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from reconcilers.forms.answers import Msg
from reconcilers.forms.model import Element, Form
from reconcilers.ports import Snapshot
from reconcilers.records import Problem

MAX_BUNDLE = 64 * 1024
LOCALES = ("en", "es")

BUILTIN = {
    "en": """
error-number = must be a number
error-min = must be at least { $min }
error-max = must be at most { $max }
error-step = must be in steps of { $step } from { $base }
error-confirm = must be yes or no
error-date = must be a date as YYYY-MM-DD
error-date-min = must be on or after { $min }
error-date-max = must be on or before { $max }
error-options = must be one of { $options }
error-option = { $value } is not one of { $options }
error-min-selected = choose at least { $min }
error-max-selected = choose at most { $max }
error-text = must be text
error-max-length = must be at most { $max } characters
error-min-length = must be at least { $min } characters
error-pattern = must match { $pattern }
error-items = must be a list of items
error-min-items = needs at least { $min } item(s)
error-max-items = takes at most { $max } item(s)
error-item = must be a table of fields
error-unique = repeats item { $item }'s { $field } ({ $value })
error-required = is required
error-unknown = is not a question of this form
answers-refused = the answers are refused
add-item = add an item?
add-another = add another item?
ui-forms = Forms
ui-preview = Preview the plan
ui-submit = Submit for review
ui-back = Back to the form
ui-plan = plan
ui-fix = Some answers need fixing.
ui-asked-when = Asked when { $condition }.
ui-submitted = Submitted
ui-committed = Committed { $commit } to branch { $branch }: review and merge it to apply.
ui-review = Pull request:
ui-no-review = No pull request was opened:
""",
    "es": """
error-number = debe ser un número
error-min = debe ser al menos { $min }
error-max = debe ser como mucho { $max }
error-step = debe ir en pasos de { $step } desde { $base }
error-confirm = debe ser sí o no
error-date = debe ser una fecha AAAA-MM-DD
error-date-min = debe ser el { $min } o después
error-date-max = debe ser el { $max } o antes
error-options = debe ser una de: { $options }
error-option = { $value } no es una de: { $options }
error-min-selected = elige al menos { $min }
error-max-selected = elige como mucho { $max }
error-text = debe ser texto
error-max-length = debe tener como mucho { $max } caracteres
error-min-length = debe tener al menos { $min } caracteres
error-pattern = debe cumplir { $pattern }
error-items = debe ser una lista de elementos
error-min-items = necesita al menos { $min } elemento(s)
error-max-items = admite como mucho { $max } elemento(s)
error-item = debe ser una tabla de campos
error-unique = repite el { $field } del elemento { $item } ({ $value })
error-required = es obligatorio
error-unknown = no es una pregunta de este formulario
answers-refused = las respuestas no son válidas
add-item = ¿añadir un elemento?
add-another = ¿añadir otro elemento?
ui-forms = Formularios
ui-preview = Ver el plan
ui-submit = Enviar a revisión
ui-back = Volver al formulario
ui-plan = plan
ui-fix = Hay respuestas que corregir.
ui-asked-when = Se pregunta cuando { $condition }.
ui-submitted = Enviado
ui-committed = Se ha guardado { $commit } en la rama { $branch }: revísala y fusiónala para aplicarla.
ui-review = Pull request:
ui-no-review = No se abrió ningún pull request:
""",
}


def pick_locale(explicit: str | None, form: Form | None = None, environ: Mapping[str, str] | None = None) -> str:
    """`explicit`, else LANG's language, when the form (and Stratum) has it; else English."""
    env = os.environ if environ is None else environ
    wanted = (explicit or env.get("LC_ALL") or env.get("LANG") or "en").split(".")[0].split("_")[0].lower()
    offered = set(form.locales) if form is not None and form.locales else set(LOCALES)
    return wanted if wanted in offered and wanted in LOCALES else "en"


def bundle_path(form: Form, locale: str) -> str:
    """Where the form's texts in `locale` live."""
    return f"forms/locales/{locale}/{form.name}.ftl"


def check_bundles(form: Form, snap: Snapshot) -> list[Problem]:
    """Every listed locale has a bundle that parses (a Fluent syntax error is located by line)."""
    from fluent.syntax import FluentParser, ast

    out: list[Problem] = []
    for locale in form.locales:
        if locale not in LOCALES:
            out.append(Problem(f"form {form.name}: locale {locale!r} is not one Stratum speaks ({', '.join(LOCALES)})",
                               form.path, reconciler="forms"))
            continue
        path = bundle_path(form, locale)
        entry = snap.entry(path)
        if entry is None:
            if locale != "en":
                out.append(Problem(f"form {form.name} lists locale {locale} but {path} is missing", form.path,
                                   reconciler="forms", hint=f"add {path} or drop {locale} from `locales`"))
            continue
        text = snap.text(entry, MAX_BUNDLE)
        try:
            body = FluentParser().parse(text).body
        except RecursionError:
            # The parser recurses into nested placeables: `x = {{{{...` overflows the stack.
            out.append(Problem("Fluent: placeables nested too deeply", path, reconciler="forms"))
            continue
        for item in body:
            if isinstance(item, ast.Junk):
                start = item.span.start if item.span is not None else 0
                note = item.annotations[0].message if item.annotations else "not Fluent syntax"
                out.append(Problem(f"Fluent: {note}", path, text.count("\n", 0, start) + 1, reconciler="forms"))
    return out


class Localizer:
    """Texts of one form in one locale."""

    def __init__(self, locale: str, form: Form | None = None, snap: Snapshot | None = None) -> None:
        # Imported here: fluent.runtime brings babel (~0.1 s), which validating bundles does not need.
        from fluent.runtime import FluentBundle, FluentResource

        self.locale = locale
        self.bundle = FluentBundle([locale], use_isolating=False)
        self.bundle.add_resource(FluentResource(BUILTIN.get(locale, BUILTIN["en"])))
        if form is not None and snap is not None:
            entry = snap.entry(bundle_path(form, locale))
            if entry is not None and entry.size <= MAX_BUNDLE:
                try:
                    self.bundle.add_resource(FluentResource(snap.text(entry, MAX_BUNDLE)))
                except RecursionError:
                    pass                  # refused by check_bundles at validate; the form's own texts stand

    def get(self, message_id: str, default: str, **args: Any) -> str:
        """The message `message_id` (with `args`), or `default` when the bundle lacks it."""
        if not self.bundle.has_message(message_id):
            return default
        message = self.bundle.get_message(message_id)
        if message.value is None:
            return default
        text, errors = self.bundle.format_pattern(message.value, {k: str(v) for k, v in args.items()})
        return default if errors else str(text)

    def prompt(self, element: Element) -> str:
        """The element's question."""
        return self.get(f"{element.name}-prompt", element.prompt)

    def help(self, element: Element) -> str:
        """The element's help line."""
        return self.get(f"{element.name}-help", element.help)

    def placeholder(self, element: Element) -> str:
        """The element's placeholder."""
        return self.get(f"{element.name}-placeholder", element.placeholder)

    def option(self, element: Element, value: str, label: str) -> str:
        """An option's label."""
        return self.get(f"{element.name}-option-{value}", label)

    def error(self, message: str) -> str:
        """A check's message in this locale (an English string without an id stays as it is)."""
        if isinstance(message, Msg):
            return self.get(message.id, str(message), **message.args)
        return message

    def form_title(self, form: Form) -> str:
        """The form's title."""
        return self.get("form-title", form.title)

    def form_description(self, form: Form) -> str:
        """The form's description."""
        return self.get("form-description", form.description)
