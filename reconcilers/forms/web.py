"""The web backend at /forms/ on the daemon's listener (behind its bearer tokens and Cedar policy).

    GET  /forms/                 the forms of the watched branch
    GET  /forms/<name>           the form (HTML5 attributes give the browser's hints: required, min, max, pattern)
    POST /forms/<name>/preview   server-side check (the CLI's own FormSession.check): errors inline, else the
                                 kernel's plan (ReconcilerEnv.plans: the markdown a pull request shows) of the
                                 commit submitting would make, and a button to submit exactly these answers
    POST /forms/<name>/submit    the previewed answers, kept server-side behind the page's one-time token
                                 (pending.py: no answer, no password goes back into HTML), checked again,
                                 needs the policy's "write" on /forms (denied without the daemon's gate),
                                 committed as the daemon with `Submitted-by: <principal>`; the kernel's plan
                                 of the branch made is shown (and is the pull request's text)

A browser logs in at /forms/login (the daemon's gate, daemon/http/sessions.py: a session cookie); for such a
session the gate hands the app a CSRF token (`scope["state"]["csrf"]`) that every form here posts back and
every POST must carry. Scripts keep sending `Authorization: Bearer` (no cookie, so no CSRF token needed).

Pages are rendered server-side with Jinja2 autoescaping; the form's own texts are repo content and are
escaped like any answer. No page runs a script.
"""

from __future__ import annotations

import hmac
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from markupsafe import Markup, escape
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from reconcilers.base import ReconcilerEnv
from reconcilers.errors import InputError, StratumError
from reconcilers.forms.forge import Forge, forge_from
from reconcilers.forms.loader import load_forms
from reconcilers.forms.model import Element
from reconcilers.forms.pages import PAGES, field_html, raw_answers, web_key
from reconcilers.forms.pending import PendingAnswers
from reconcilers.forms.session import FormSession

if TYPE_CHECKING:
    from reconcilers.forms.secrets import SealPasswords

MAX_BODY = 256 * 1024
MAX_SESSIONS = 2          # forms rendered at once (each has its own template worker process)
SLOT_WAIT_S = 30.0


# Pages run no script and embed nothing: the policy says so, so injected markup could not act either.
PAGE_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
                "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
                                           "frame-ancestors 'none'; base-uri 'none'"}


class Busy(Exception):
    """Every session slot stayed taken for SLOT_WAIT_S."""

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


def _busy() -> Response:
    return Response("the forms backend is busy: try again in a moment", status_code=503,
                    headers={"Retry-After": "5"})


def _principal(request: Request) -> str:
    """The authenticated client (the daemon's gate puts it in the scope); "anonymous" without the gate."""
    return str(request.scope.get("state", {}).get("principal") or "anonymous")


def _csrf(request: Request) -> str:
    """The CSRF token of the request's browser session ("" for a bearer client: nothing ambient to forge)."""
    return str(request.scope.get("state", {}).get("csrf") or "")


def _forged(request: Request, data: Any) -> Response | None:
    """403 when a browser session's POST lacks its CSRF token (another site's form cannot know it)."""
    expected = _csrf(request)
    if expected and not hmac.compare_digest(str(data.get("csrf", "")), expected):
        return Response("this form was not made by your session (its CSRF token is missing or wrong): "
                        "reload the page and submit again", status_code=403)
    return None


def _locale(request: Request) -> str:
    """?locale=, else the first language of Accept-Language, else English."""
    from reconcilers.forms.i18n import LOCALES

    wanted = request.query_params.get("locale") or request.headers.get("accept-language", "en")
    first = wanted.split(",")[0].split(";")[0].split("-")[0].strip().lower()
    return first if first in LOCALES else "en"


def web_app(env: ReconcilerEnv, prefix: str = "/forms", sessions: int = MAX_SESSIONS,
            slot_wait: float = SLOT_WAIT_S) -> Starlette:
    """The ASGI app of the web backend over the daemon's ports (`sessions` forms rendered at once)."""

    pending = PendingAnswers()
    # Each session starts a template worker: at most MAX_SESSIONS at once, so a burst of requests cannot
    # fill the host with processes; the rest wait briefly, then get 503.
    slots = threading.Semaphore(sessions)

    @contextmanager
    def session(name: str, locale: str | None = None) -> Iterator[FormSession]:
        if env.revisions is None or env.evaluator is None:
            raise InputError("the forms web backend has no repository here", hint="report this bug")
        if not slots.acquire(timeout=slot_wait):
            raise Busy()
        try:
            yield from _session(name, locale)
        finally:
            slots.release()

    def _session(name: str, locale: str | None) -> Iterator[FormSession]:
        assert env.revisions is not None and env.evaluator is not None
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

    def page(template: str, status: int = 200, csrf: str = "", **kw: Any) -> HTMLResponse:
        # Pages may carry answers (a plan page holds them for the submit button): never kept by a cache.
        return HTMLResponse(PAGES.get_template(template).render(prefix=prefix, csrf=csrf, **kw), status_code=status,
                            headers=PAGE_HEADERS)

    def kernel_plan(base: str, head: str, fallback: str) -> str:
        """The kernel's plan of `head` against `base`; the form's own plan, said so, when there is none."""
        if env.plans is None:
            return fallback
        try:
            return env.plans(base, head)
        except StratumError as err:
            return f"(the full plan could not be made: {err.render()}; the form's own plan follows)\n\n{fallback}"

    def form_page(s: FormSession, values: Mapping[str, Any], errors: Mapping[str, str], message: str = "",
                  status: int = 200, csrf: str = "") -> HTMLResponse:
        options = {e.name: s.labels(e.name) for e in s.form.elements if e.type in ("select", "multiselect")}
        elements = list(s.form.elements)
        errors = {web_key(k): v for k, v in errors.items()}

        def field(e: Element, value: Any, errs: Mapping[str, str], key: str) -> Any:
            if e.type != "group":
                return Markup(field_html(e, value, errs, key, options, s.text))
            items = value if isinstance(value, list) else []
            parts = [f"<fieldset><legend>{escape(s.text.prompt(e))}</legend>"]
            for i in range(max(e.min_items, 1, min(len(items) + 1, e.max_items))):
                item = items[i] if i < len(items) else {}
                parts += [field_html(f, item.get(f.name), errs, f"{e.name}.{i}.{f.name}", options, s.text)
                          for f in e.fields]
            if e.name in errs:
                parts.append(f'<div class="error">{escape(errs[e.name])}</div>')
            return Markup("\n".join(parts) + "</fieldset>")
        return page("form.html", status, csrf, title=s.form.title, form=s.form, elements=elements, values=values,
                    errors=errors, message=message, field=field, lang=s.text.locale, t=s.text.get,
                    form_title=s.text.form_title(s.form), form_description=s.text.form_description(s.form))

    async def index(request: Request) -> Response:
        csrf = _csrf(request)

        def work() -> Response:
            if env.revisions is None:
                return page("list.html", csrf=csrf, title="Forms", forms=[])
            forms = load_forms(env.revisions.snapshot(env.revisions.branch)).forms.values()
            return page("list.html", csrf=csrf, title="Forms", forms=list(forms))
        return await run_in_threadpool(work)

    async def show(request: Request) -> Response:
        name = request.path_params["name"]
        locale = _locale(request)

        def work() -> Response:
            try:
                with session(name, locale) as s:
                    return form_page(s, s.defaults(), {}, csrf=_csrf(request))
            except LookupError:
                return Response(f"no form {name}", status_code=404)
            except Busy:
                return _busy()
        return await run_in_threadpool(work)

    async def body(request: Request) -> Any:
        if int(request.headers.get("content-length") or 0) > MAX_BODY:
            raise InputError(f"the request is over {MAX_BODY} bytes")
        return await request.form(max_files=0, max_fields=2000)

    async def preview(request: Request) -> Response:
        name = request.path_params["name"]
        principal = _principal(request)
        locale = _locale(request)
        data = await body(request)
        csrf = _csrf(request)
        forged = _forged(request, data)
        if forged is not None:
            return forged

        def work() -> Response:
            try:
                with session(name, locale) as s:
                    raw = raw_answers(s.form, data)
                    checked = s.check(raw)
                    if not checked.ok:
                        return form_page(s, raw, checked.errors, s.text.get("ui-fix", ""), 422, csrf)
                    try:
                        p = s.preview(checked.answers)
                        # The kernel plans the commit submitting would make (no branch points to it yet).
                        plan = kernel_plan(s.snap.revision, s.draft(checked.answers, principal, p), p.plan)
                    except StratumError as err:
                        return form_page(s, raw, {}, err.render(), 422, csrf)
                    # The page gets a one-time token; the answers (passwords too) stay here.
                    token = pending.put(name, principal, checked.answers)
                    return page("plan.html", csrf=csrf, title=s.form.title, form=s.form, plan=plan, token=token,
                                t=s.text.get, lang=s.text.locale, form_title=s.text.form_title(s.form))
            except LookupError:
                return Response(f"no form {name}", status_code=404)
            except Busy:
                return _busy()
        return await run_in_threadpool(work)

    async def submit(request: Request) -> Response:
        name = request.path_params["name"]
        authorize = request.scope.get("state", {}).get("authorize")
        # Fail closed: without the daemon's gate in front (no `authorize` handed in) nobody submits.
        if authorize is None or not authorize("write"):
            return Response("the daemon's policy does not let you submit forms (action write on /forms)",
                            status_code=403)
        principal = _principal(request)
        locale = _locale(request)
        data = await body(request)
        csrf = _csrf(request)
        forged = _forged(request, data)
        if forged is not None:
            return forged

        def work() -> Response:
            raw = pending.take(str(data.get("token", "")), name, principal)
            if raw is None:
                return Response("this preview is unknown, used or expired: fill the form and preview it again",
                                status_code=409)
            try:
                with session(name, locale) as s:
                    checked = s.check(raw if isinstance(raw, dict) else {})
                    if not checked.ok:
                        return form_page(s, raw, checked.errors, s.text.get("ui-fix", ""), 422, csrf)
                    who = f"{principal} (http)"
                    try:
                        sub = s.submit(checked.answers, who, review=False)
                    except StratumError as err:
                        return form_page(s, raw, {}, err.render(), 422, csrf)
                    # The branch's plan as the kernel makes it: shown here, and the pull request's text.
                    sub = s.review(replace(sub, plan=kernel_plan(s.snap.revision, sub.commit, sub.plan)), who)
                    return page("done.html", csrf=csrf, title=s.text.get("ui-submitted", "Submitted"),
                                branch=sub.branch, commit=sub.commit[:12], plan=sub.plan, review=sub.review,
                                review_error=sub.review_error, t=s.text.get)
            except LookupError:
                return Response(f"no form {name}", status_code=404)
            except Busy:
                return _busy()
        return await run_in_threadpool(work)

    return Starlette(routes=[
        Route("/", index), Route("/{name}", show), Route("/{name}/preview", preview, methods=["POST"]),
        Route("/{name}/submit", submit, methods=["POST"]),
    ])
