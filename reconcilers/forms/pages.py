"""The web backend's pages: Jinja2 templates (autoescaped) and the HTML of each element, and the reverse:
a posted form back to raw answers. Repo texts (prompts, help, options) are escaped like any answer."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import jinja2
from markupsafe import escape

from reconcilers.forms.i18n import Localizer
from reconcilers.forms.model import Element, Form

PAGES = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, loader=jinja2.DictLoader({
    "base.html": """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title>
<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}label{display:block;margin-top:1em}
.error{color:#b00020}.help{color:#555;font-size:90%}pre{background:#f4f4f4;padding:1em;white-space:pre-wrap}
fieldset{margin-top:1em}.session{float:right}</style></head><body>
{% if csrf %}<form class="session" method="post" action="{{ prefix }}/logout"><input type="hidden" name="csrf"
value="{{ csrf }}"><button type="submit" id="logout">Log out</button></form>{% endif %}
{% block body %}{% endblock %}</body></html>""",
    "list.html": """{% extends "base.html" %}{% block body %}<h1>Forms</h1><ul>
{% for f in forms %}<li><a href="{{ prefix }}/{{ f.name }}">{{ f.title }}</a> — {{ f.description }}</li>{% endfor %}
</ul>{% endblock %}""",
    "form.html": """{% extends "base.html" %}{% block body %}<h1>{{ form_title }}</h1><p>{{ form_description }}</p>
{% if message %}<p class="error" id="message">{{ message }}</p>{% endif %}
<form method="post" action="{{ prefix }}/{{ form.name }}/preview?locale={{ lang }}">
{% if csrf %}<input type="hidden" name="csrf" value="{{ csrf }}">{% endif %}
{% for e in elements %}{{ field(e, values.get(e.name), errors, e.name) }}{% endfor %}
<p><button type="submit" id="preview">{{ t("ui-preview", "Preview the plan") }}</button></p></form>{% endblock %}""",
    "plan.html": """{% extends "base.html" %}{% block body %}<h1>{{ form_title }}: {{ t("ui-plan", "plan") }}</h1>
<pre id="plan">{{ plan }}</pre>
<form method="post" action="{{ prefix }}/{{ form.name }}/submit?locale={{ lang }}">
<input type="hidden" name="token" value="{{ token }}">
{% if csrf %}<input type="hidden" name="csrf" value="{{ csrf }}">{% endif %}
<p><button type="submit" id="submit">{{ t("ui-submit", "Submit for review") }}</button></p></form>
<p><a href="{{ prefix }}/{{ form.name }}?locale={{ lang }}">{{ t("ui-back", "Back to the form") }}</a></p>
{% endblock %}""",
    "done.html": """{% extends "base.html" %}{% block body %}<h1>{{ t("ui-submitted", "Submitted") }}</h1>
<p id="done">{{ t("ui-committed", "", commit=commit, branch=branch) }}</p><p><code id="branch">{{ branch }}</code></p>
{% if review %}<p>{{ t("ui-review", "Pull request:") }} <a id="review" href="{{ review }}">{{ review }}</a></p>
{% endif %}
{% if review_error %}<p class="error">{{ t("ui-no-review", "No pull request was opened:") }} {{ review_error }}</p>
{% endif %}
<pre id="plan">{{ plan }}</pre>{% endblock %}""",
}))


def field_html(e: Element, value: Any, errors: Mapping[str, str], key: str, options: Mapping[str, Any],
           text: Localizer) -> str:
    """One element as HTML (escaped), with its error under it."""
    esc = escape
    attrs = [f'name="{esc(key)}"', f'id="f-{esc(key)}"']
    # Not for a conditional element: the page runs no script to tell whether its `when` holds, and a hidden
    # requirement kept the browser from posting at all (the server checks it when it applies).
    if e.required and not e.when and e.type not in ("confirm", "multiselect"):
        attrs.append("required")
    shown = "" if value is None else value
    out = [f'<label for="f-{esc(key)}">{esc(text.prompt(e))}</label>']
    if e.type == "select":
        labels = options.get(e.name, {})
        opts = "".join(f'<option value="{esc(v)}"{" selected" if v == shown else ""}>{esc(text.option(e, v, lbl))}'
                       '</option>' for v, lbl in labels.items())
        out.append(f"<select {' '.join(attrs)}>{opts}</select>")
    elif e.type == "multiselect":
        labels = options.get(e.name, {})
        chosen = shown if isinstance(shown, list) else []
        out += [f'<label><input type="checkbox" name="{esc(key)}" value="{esc(v)}"'
                f'{" checked" if v in chosen else ""}> {esc(text.option(e, v, lbl))}</label>'
                for v, lbl in labels.items()]
    elif e.type == "confirm":
        out.append(f'<input type="checkbox" value="yes" {" ".join(attrs[:2])}{" checked" if shown is True else ""}>')
    else:
        kind = {"number": "number", "password": "password", "date": "date"}.get(e.type, "text")
        if e.type == "number":
            attrs += [f'{k}="{esc(v)}"' for k, v in (("min", e.minimum), ("max", e.maximum), ("step", e.step or "any"))
                      if v is not None]
        if e.pattern:
            attrs.append(f'pattern="{esc(e.pattern)}"')
        if text.placeholder(e):
            attrs.append(f'placeholder="{esc(text.placeholder(e))}"')
        if e.type != "password":
            attrs.append(f'value="{esc(shown)}"')
        out.append(f'<input type="{kind}" {" ".join(attrs)}>')
    if e.when:
        out.append(f'<div class="help">{esc(text.get("ui-asked-when", "", condition=e.when))}</div>')
    if text.help(e):
        out.append(f'<div class="help">{esc(text.help(e))}</div>')
    if key in errors:
        out.append(f'<div class="error" id="error-{esc(key)}">{esc(text.error(errors[key]))}</div>')
    return "\n".join(out)


def raw_answers(form: Form, data: Any) -> dict[str, Any]:
    """Form fields to raw answers (groups as `group.N.field`); everything is checked afterwards."""
    out: dict[str, Any] = {}
    for e in form.elements:
        if e.type == "group":
            items = []
            for i in range(e.max_items):
                item = {f.name: data.get(f"{e.name}.{i}.{f.name}") for f in e.fields}
                if any(v not in (None, "") for v in item.values()):
                    items.append({k: v for k, v in item.items() if v not in (None, "")})
            out[e.name] = items
        elif e.type == "multiselect":
            out[e.name] = data.getlist(e.name)
        elif e.type == "confirm":
            out[e.name] = data.get(e.name) == "yes"
        elif data.get(e.name) not in (None, ""):
            out[e.name] = data.get(e.name)
    return out


def web_key(key: str) -> str:
    """A check's error key for a group field (`ports[2].port`, 1-based) as the page's field name (`ports.1.port`)."""
    match = re.fullmatch(r"([a-z][a-z0-9_]*)\[(\d+)\]\.([a-z][a-z0-9_]*)", key)
    return f"{match.group(1)}.{int(match.group(2)) - 1}.{match.group(3)}" if match else key
