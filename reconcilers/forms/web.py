"""The web backend at /forms/ on the daemon's listener (behind its bearer tokens and Cedar policy).

    GET  /forms/                 the forms of the watched branch
    GET  /forms/<name>           the form (HTML5 attributes give the browser's hints: required, min, max, pattern)
    POST /forms/<name>/preview   server-side check (the CLI's own FormSession.check): errors inline, else the
                                 plan of the generated branch, and a button to submit exactly these answers
    POST /forms/<name>/submit    checked again (never trusted from the page), needs the policy's "write" on
                                 /forms, committed as the daemon with `Submitted-by: <principal>`

Pages are rendered server-side with Jinja2 autoescaping; the form's own texts are repo content and are
escaped like any answer. No page runs a script.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import jinja2
from markupsafe import Markup, escape
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from reconcilers.base import ReconcilerEnv
from reconcilers.errors import InputError, StratumError
from reconcilers.forms.forge import Forge, forge_from
from reconcilers.forms.i18n import Localizer
from reconcilers.forms.loader import load_forms
from reconcilers.forms.model import Element, Form
from reconcilers.forms.session import FormSession

if TYPE_CHECKING:
    from reconcilers.forms.secrets import SealPasswords

MAX_BODY = 256 * 1024

_PAGES = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, loader=jinja2.DictLoader({
    "base.html": """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title>
<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}label{display:block;margin-top:1em}
.error{color:#b00020}.help{color:#555;font-size:90%}pre{background:#f4f4f4;padding:1em;white-space:pre-wrap}
fieldset{margin-top:1em}</style></head><body>{% block body %}{% endblock %}</body></html>""",
    "list.html": """{% extends "base.html" %}{% block body %}<h1>Forms</h1><ul>
{% for f in forms %}<li><a href="{{ prefix }}/{{ f.name }}">{{ f.title }}</a> — {{ f.description }}</li>{% endfor %}
</ul>{% endblock %}""",
    "form.html": """{% extends "base.html" %}{% block body %}<h1>{{ form_title }}</h1><p>{{ form_description }}</p>
{% if message %}<p class="error" id="message">{{ message }}</p>{% endif %}
<form method="post" action="{{ prefix }}/{{ form.name }}/preview?locale={{ lang }}">
{% for e in elements %}{{ field(e, values.get(e.name), errors, e.name) }}{% endfor %}
<p><button type="submit" id="preview">{{ t("ui-preview", "Preview the plan") }}</button></p></form>{% endblock %}""",
    "plan.html": """{% extends "base.html" %}{% block body %}<h1>{{ form_title }}: {{ t("ui-plan", "plan") }}</h1>
<pre id="plan">{{ plan }}</pre>
<form method="post" action="{{ prefix }}/{{ form.name }}/submit?locale={{ lang }}">
<input type="hidden" name="__answers" value="{{ answers }}">
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


def _field(e: Element, value: Any, errors: Mapping[str, str], key: str, options: Mapping[str, Any],
           text: Localizer) -> str:
    """One element as HTML (escaped), with its error under it."""
    esc = escape
    attrs = [f'name="{esc(key)}"', f'id="f-{esc(key)}"']
    if e.required and e.type not in ("confirm", "multiselect"):
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


def _raw_answers(form: Form, data: Any) -> dict[str, Any]:
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


def _sealer(env: ReconcilerEnv) -> SealPasswords | None:
    """Passwords from the web are sealed with the host's `[forms] key_file` (a trusted signer), if set."""
    key_file = env.settings.get("forms", {}).get("key_file")
    if not key_file or env.evaluator is None:
        return None
    from pathlib import Path

    from reconcilers.forms.secrets import vault_sealer
    from reconcilers.vault.keys import read_key_file

    return vault_sealer(env.evaluator, lambda: read_key_file(Path(str(key_file))))


def _forge(env: ReconcilerEnv) -> Forge | None:
    """The host's forge; a broken [forms.forge] leaves submissions as branches (the CLI reports it)."""
    try:
        return forge_from(env.settings.get("forms", {}))
    except StratumError:
        return None


def _web_key(key: str) -> str:
    """A check's error key for a group field (`ports[2].port`, 1-based) as the page's field name (`ports.1.port`)."""
    match = re.fullmatch(r"([a-z][a-z0-9_]*)\[(\d+)\]\.([a-z][a-z0-9_]*)", key)
    return f"{match.group(1)}.{int(match.group(2)) - 1}.{match.group(3)}" if match else key


def _locale(request: Request) -> str:
    """?locale=, else the first language of Accept-Language, else English."""
    from reconcilers.forms.i18n import LOCALES

    wanted = request.query_params.get("locale") or request.headers.get("accept-language", "en")
    first = wanted.split(",")[0].split(";")[0].split("-")[0].strip().lower()
    return first if first in LOCALES else "en"


def web_app(env: ReconcilerEnv, prefix: str = "/forms") -> Starlette:
    """The ASGI app of the web backend over the daemon's ports."""

    @contextmanager
    def session(name: str, locale: str | None = None) -> Iterator[FormSession]:
        if env.revisions is None or env.evaluator is None:
            raise InputError("the forms web backend has no repository here", hint="report this bug")
        snap = env.revisions.snapshot(env.revisions.branch)
        form = load_forms(snap).forms.get(name)
        if form is None:
            raise LookupError(name)
        s = FormSession(form, snap, env.evaluator, watched=env.revisions.branch, writer=env.git_writer,
                        seal=_sealer(env) if any(e.type == "password" for e in form.elements) else None,
                        locale=locale or "en", forge=_forge(env))
        try:
            yield s
        finally:
            s.close()

    def page(template: str, status: int = 200, **kw: Any) -> HTMLResponse:
        # Pages may carry answers (a plan page holds them for the submit button): never kept by a cache.
        return HTMLResponse(_PAGES.get_template(template).render(prefix=prefix, **kw), status_code=status,
                            headers={"Cache-Control": "no-store"})

    def form_page(s: FormSession, values: Mapping[str, Any], errors: Mapping[str, str], message: str = "",
                  status: int = 200) -> HTMLResponse:
        options = {e.name: s.labels(e.name) for e in s.form.elements if e.type in ("select", "multiselect")}
        elements = list(s.form.elements)
        errors = {_web_key(k): v for k, v in errors.items()}

        def field(e: Element, value: Any, errs: Mapping[str, str], key: str) -> Any:
            if e.type != "group":
                return Markup(_field(e, value, errs, key, options, s.text))
            items = value if isinstance(value, list) else []
            parts = [f"<fieldset><legend>{escape(s.text.prompt(e))}</legend>"]
            for i in range(max(e.min_items, 1, min(len(items) + 1, e.max_items))):
                item = items[i] if i < len(items) else {}
                parts += [_field(f, item.get(f.name), errs, f"{e.name}.{i}.{f.name}", options, s.text)
                          for f in e.fields]
            if e.name in errs:
                parts.append(f'<div class="error">{escape(errs[e.name])}</div>')
            return Markup("\n".join(parts) + "</fieldset>")
        return page("form.html", status, title=s.form.title, form=s.form, elements=elements, values=values,
                    errors=errors, message=message, field=field, lang=s.text.locale, t=s.text.get,
                    form_title=s.text.form_title(s.form), form_description=s.text.form_description(s.form))

    async def index(request: Request) -> Response:
        def work() -> Response:
            if env.revisions is None:
                return page("list.html", title="Forms", forms=[])
            forms = load_forms(env.revisions.snapshot(env.revisions.branch)).forms.values()
            return page("list.html", title="Forms", forms=list(forms))
        return await run_in_threadpool(work)

    async def show(request: Request) -> Response:
        name = request.path_params["name"]
        locale = _locale(request)

        def work() -> Response:
            try:
                with session(name, locale) as s:
                    return form_page(s, s.defaults(), {})
            except LookupError:
                return Response(f"no form {name}", status_code=404)
        return await run_in_threadpool(work)

    async def body(request: Request) -> Any:
        if int(request.headers.get("content-length") or 0) > MAX_BODY:
            raise InputError(f"the request is over {MAX_BODY} bytes")
        return await request.form(max_files=0, max_fields=2000)

    async def preview(request: Request) -> Response:
        name = request.path_params["name"]
        locale = _locale(request)
        data = await body(request)

        def work() -> Response:
            try:
                with session(name, locale) as s:
                    raw = _raw_answers(s.form, data)
                    checked = s.check(raw)
                    if not checked.ok:
                        return form_page(s, raw, checked.errors, s.text.get("ui-fix", ""), 422)
                    try:
                        p = s.preview(checked.answers)
                    except StratumError as err:
                        return form_page(s, raw, {}, err.render(), 422)
                    return page("plan.html", title=s.form.title, form=s.form, plan=p.plan,
                                answers=json.dumps(checked.answers), t=s.text.get, lang=s.text.locale,
                                form_title=s.text.form_title(s.form))
            except LookupError:
                return Response(f"no form {name}", status_code=404)
        return await run_in_threadpool(work)

    async def submit(request: Request) -> Response:
        name = request.path_params["name"]
        state = request.scope.get("state", {})
        authorize = state.get("authorize")
        if authorize is not None and not authorize("write"):
            return Response("the daemon's policy does not let you submit forms (action write on /forms)",
                            status_code=403)
        principal = str(state.get("principal") or "anonymous")
        locale = _locale(request)
        data = await body(request)

        def work() -> Response:
            try:
                raw = json.loads(str(data.get("__answers", "{}")))
            except ValueError:
                return Response("the answers did not come back intact", status_code=400)
            try:
                with session(name, locale) as s:
                    checked = s.check(raw if isinstance(raw, dict) else {})
                    if not checked.ok:
                        return form_page(s, raw, checked.errors, s.text.get("ui-fix", ""), 422)
                    try:
                        sub = s.submit(checked.answers, f"{principal} (http)")
                    except StratumError as err:
                        return form_page(s, raw, {}, err.render(), 422)
                    return page("done.html", title=s.text.get("ui-submitted", "Submitted"), branch=sub.branch,
                                commit=sub.commit[:12], plan=sub.plan, review=sub.review,
                                review_error=sub.review_error, t=s.text.get)
            except LookupError:
                return Response(f"no form {name}", status_code=404)
        return await run_in_threadpool(work)

    return Starlette(routes=[
        Route("/", index), Route("/{name}", show), Route("/{name}/preview", preview, methods=["POST"]),
        Route("/{name}/submit", submit, methods=["POST"]),
    ])
