"""Reading `forms/*.toml` of a revision: each file parsed and checked, a broken one a located problem."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

from reconcilers.errors import InputError
from reconcilers.ports import Snapshot
from reconcilers.records import Problem

if TYPE_CHECKING:
    from reconcilers.forms.model import Form

MAX_FORMS = 200


@dataclass(frozen=True, slots=True)
class FormsDesired:
    """The forms of a revision by name, and the problems found reading them."""

    forms: Mapping[str, Form] = field(default_factory=lambda: MappingProxyType({}))
    problems: tuple[Problem, ...] = ()


def load_forms(snap: Snapshot) -> FormsDesired:
    """Every `forms/*.toml` of the snapshot, parsed and checked (a broken one is a located problem)."""
    forms: dict[str, Form] = {}
    problems: list[Problem] = []
    entries = [e for e in snap.entries("forms", suffixes=(".toml",)) if e.path.count("/") == 1]
    if len(entries) > MAX_FORMS:
        problems.append(Problem(f"{len(entries)} form files: at most {MAX_FORMS}", "forms", reconciler="forms"))
        entries = entries[:MAX_FORMS]
    if entries:
        # The form model and its checks (~25 ms of imports: a reconciler built for every verb) load only for a
        # revision that has forms.
        from reconcilers.forms.checks import check_form
        from reconcilers.forms.model import MAX_FORM_BYTES, FormError, parse_form
    for entry in entries:
        try:
            form = parse_form(entry.path, snap.text(entry, MAX_FORM_BYTES + 1))
        except FormError as err:
            problems.append(Problem(str(err), entry.path, err.line, reconciler="forms"))
            continue
        except (InputError, UnicodeDecodeError) as err:
            problems.append(Problem(str(err), entry.path, reconciler="forms"))
            continue
        found = check_form(form)
        if form.locales:
            from reconcilers.forms.i18n import check_bundles

            found += check_bundles(form, snap)
        if snap.entry(form.template) is None:
            found.append(Problem(f"form {form.name}: template {form.template} is not in the commit", entry.path,
                                 reconciler="forms", hint="commit the template or fix the path"))
        if form.name in forms:
            found.append(Problem(f"form {form.name} is also defined in {forms[form.name].path}", entry.path,
                                 reconciler="forms", hint="form names are unique"))
        problems += found
        if not found:
            forms[form.name] = form
    return FormsDesired(MappingProxyType(forms), tuple(problems))
