"""The web backend at /forms/, served exactly as the daemon serves mounts (build_app + AuthMiddleware + uvicorn on
127.0.0.1), driven in Debian's headless Chromium through Playwright. Screenshots go to the test's tmp dir; on
failure their path is printed."""

from __future__ import annotations

import http.client
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pygit2
import pytest

from daemon.http.auth import token_digest
from daemon.http.server import HttpServer, build_app, listener_settings, reconciler_mounts
from daemon.service.metrics import Metrics
from reconcilers.base import ReconcilerEnv
from reconcilers.forms.reconciler import FormsReconciler
from tests.fixtures import git
from tests.reconcilers.forms.conftest import OpsRepo

ADMIN, READER = "forms-admin-token-0123456789abcdef", "forms-reader-token-0123456789abcdef"
OTHER_ADMIN = "forms-carol-token-0123456789abcdef"
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]


class Served:
    """The forms reconciler's mount behind the daemon's own gate, on a free loopback port."""

    def __init__(self, tmp: Path, ops: OpsRepo, host: dict[str, Any] | None = None) -> None:
        tokens = tmp / "tokens"
        tokens.write_text(f"alice:admin:{token_digest(ADMIN)}\nbob:reader:{token_digest(READER)}\n"
                          f"carol:admin:{token_digest(OTHER_ADMIN)}\n")
        tokens.chmod(0o600)
        http, auth, _ = listener_settings("127.0.0.1:0", {"tokens_file": str(tokens)}, "stratumd.toml")
        env = ReconcilerEnv(data_dir=tmp / "data", evaluator=ops.evaluator, revisions=ops.source,
                            git_writer=ops.writer, settings=host or {})
        self.reconciler = FormsReconciler(env)
        app = build_app(Metrics(), lambda: {"ok": True}, reconciler_mounts([self.reconciler]), auth=auth)
        self.server = HttpServer("127.0.0.1:0", app, http)
        self.server.start()
        deadline = time.monotonic() + 60              # a loaded machine starts uvicorn slowly
        while not self.server.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        self.url = f"http://127.0.0.1:{self.server.port}"

    def post(self, path: str, fields: dict[str, str], token: str) -> tuple[int, str]:
        """(status, body) of a form POST."""
        conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=60)
        try:
            conn.request("POST", path, body=urllib.parse.urlencode(fields),
                         headers={"Authorization": f"Bearer {token}",
                                  "Content-Type": "application/x-www-form-urlencoded"})
            resp = conn.getresponse()
            return resp.status, resp.read().decode()
        finally:
            conn.close()

    def close(self) -> None:
        """Stop the listener."""
        self.server.stop()
        self.reconciler.close()


@pytest.fixture
def served(tmp_path: Path, ops: OpsRepo) -> Iterator[Served]:
    """The web backend over the template repository."""
    s = Served(tmp_path, ops)
    yield s
    s.close()


def test_the_mount_is_behind_the_daemons_tokens(served: Served) -> None:
    """No token: 401 from the gate, before the form app sees the request."""
    conn = http.client.HTTPConnection("127.0.0.1", served.server.port, timeout=10)
    conn.request("GET", "/forms/")
    assert conn.getresponse().status == 401
    conn.close()


def test_server_side_validation_is_the_clis(served: Served, ops: OpsRepo) -> None:
    """A POST that skips the browser's hints gets the same messages FormSession.check gives the CLI."""
    fields = {"name": "Bad Name", "port": "80", "workers": "2", "runtime": "command", "owner": "platform"}
    status, body = served.post("/forms/local-service/preview", fields, ADMIN)
    session = ops.session()
    try:
        expected = session.check({**fields, "restart": False}).errors
    finally:
        session.close()
    assert status == 422
    assert set(expected) == {"name", "port", "command"}
    for key, message in expected.items():
        assert f'id="error-{key}">{message}<' in body.replace("&#39;", "'")


def test_a_reader_cannot_submit(served: Served, ops: OpsRepo) -> None:
    """The policy's `write` on /forms decides who submits: a reader gets 403, and no branch appears."""
    status, _ = served.post("/forms/local-service/submit", {"token": "whatever"}, READER)
    assert status == 403
    assert git(ops.work.path, "for-each-ref", "--format=%(refname)", "refs/heads") == "refs/heads/main"


def _shot(page: Any, tmp: Path, name: str) -> Path:
    path = tmp / f"forms-{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


@pytest.mark.slow
def test_a_browser_fills_the_form_sees_the_plan_and_gets_a_branch(served: Served, ops: OpsRepo,
                                                                   tmp_path: Path) -> None:
    """In Chromium: open the list, the form, fill it (the browser's hint stops a bad port), preview the plan,
    submit; the branch exists, main does not move."""
    from playwright.sync_api import sync_playwright

    main = git(ops.work.path, "rev-parse", "main")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        context = browser.new_context(extra_http_headers={"Authorization": f"Bearer {ADMIN}"})
        page = context.new_page()
        try:
            page.goto(f"{served.url}/forms/")
            page.click("text=A new local service")
            page.fill("#f-name", "checkout")
            # The browser's own hint first: port 80 is under the field's min, so Chromium does not even post.
            page.fill("#f-port", "80")
            page.click("#preview")
            assert page.eval_on_selector("#f-port", "e => e.validity.rangeUnderflow") is True
            assert page.url.endswith("/forms/local-service") and page.query_selector("#plan") is None
            page.fill("#f-port", "9100")
            page.select_option("#f-runtime", "command")
            page.fill("#f-command", "/usr/bin/checkout --port 9100")
            page.click("#preview")
            plan = page.inner_text("#plan")
            assert "| create | `checkout-service` | systemd_unit |" in plan
            print("plan screenshot:", _shot(page, tmp_path, "plan"))
            page.click("#submit")
            branch = page.inner_text("#branch")
            print("submitted screenshot:", _shot(page, tmp_path, "submitted"))
        except Exception:
            print("screenshot at failure:", _shot(page, tmp_path, "failure"))
            raise
        finally:
            browser.close()
    assert branch.startswith("forms/local-service/")
    assert git(ops.work.path, "rev-parse", "main") == main
    commit = pygit2.Repository(str(ops.work.path)).revparse_single(branch)
    assert "Submitted-by: alice (http)" in commit.message
    assert "/usr/bin/checkout --port 9100" in commit.tree["infra/services/checkout.ncl"].data.decode()


def test_the_page_speaks_the_browsers_language(served: Served) -> None:
    """Accept-Language: es gives the Spanish prompts, and Spanish errors after a refused preview."""
    conn = http.client.HTTPConnection("127.0.0.1", served.server.port, timeout=60)
    conn.request("GET", "/forms/local-service",
                 headers={"Authorization": f"Bearer {ADMIN}", "Accept-Language": "es-ES,es;q=0.9"})
    resp = conn.getresponse()
    page = resp.read().decode()
    conn.close()
    assert resp.getheader("Cache-Control") == "no-store"
    assert "default-src 'none'" in (resp.getheader("Content-Security-Policy") or "")
    assert "Nombre del servicio" in page and "Un nuevo servicio local" in page
    status, body = served.post("/forms/local-service/preview?locale=es",
                               {"name": "web", "port": "80", "workers": "2", "runtime": "python", "owner": "x"}, ADMIN)
    assert status == 422 and 'id="error-port">debe ser al menos 1024<' in body
    assert "Hay respuestas que corregir." in body and "Ver el plan" in body


def test_a_password_from_the_web_is_sealed_with_the_hosts_key(tmp_path: Path, ops: OpsRepo) -> None:
    """[forms] key_file: the daemon seals a password element into a manifest; the branch holds no plaintext."""
    from reconcilers.vault import envelope, keys, manifest
    from tests.reconcilers.forms.test_passwords import FORM, TEMPLATE
    from tests.vault_fixtures import CANARY, B, secret_world

    world = secret_world(tmp_path / "data")
    key_file = tmp_path / "forms.key"
    keys.write_key_file(key_file, world.user_identity, world.user)
    ops.work.commit({"forms/db-user.toml": FORM, "forms/templates/db-user.ncl.j2": TEMPLATE,
                     "secrets/rules.ncl": world.rules()}, message="db form")
    served = Served(tmp_path, ops, {"forms": {"key_file": str(key_file)}})
    try:
        status, page = served.post("/forms/db-user/preview", {"name": "audit", "password": CANARY}, ADMIN)
        assert status == 200, page
        assert CANARY not in page                     # the plan page holds a token, never the answers
        token = page.split('name="token" value="')[1].split('"')[0]
        status, done = served.post("/forms/db-user/submit", {"token": token}, ADMIN)
        assert status == 200, done
        assert CANARY not in done
    finally:
        served.close()
    branch = done.split('id="branch">')[1].split("<")[0]
    commit = pygit2.Repository(str(ops.work.path)).revparse_single(branch)
    path = "secrets/forms/db-user-audit.yaml"
    assert CANARY not in commit.tree["infra/db-users/audit.ncl"].data.decode()
    ring = keys.KeyRing((world.user_identity,), (world.user,))
    opened = envelope.open_manifest(B, manifest.parse(commit.tree[path].data.decode(), path), ring, path)
    assert opened.values == {"password": CANARY}


GROUP_FORM = '''[form]
name = "ports"
title = "Ports"
target = "infra/ports/{name}.ncl"
template = "forms/templates/ports.ncl.j2"

[[elements]]
name = "name"
pattern = "[a-z]+"

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
'''
GROUP_TEMPLATE = '''{ resources = { {% for p in ports %}{{ name }}-{{ p.port }} = { kind = 'directory,
  path = "srv/{{ name }}/{{ p.port }}" }, {% endfor %} } }
'''


def test_repeating_groups_on_the_web(tmp_path: Path, ops: OpsRepo) -> None:
    """Group rows post as group.N.field; a repeated unique field shows its error under that row's field; a
    good set previews one resource per item."""
    ops.work.commit({"forms/ports.toml": GROUP_FORM, "forms/templates/ports.ncl.j2": GROUP_TEMPLATE}, message="g")
    served = Served(tmp_path, ops)
    try:
        status, body = served.post("/forms/ports/preview", {"name": "edge", "ports.0.port": "80",
                                                            "ports.1.port": "80"}, ADMIN)
        assert status == 422 and 'id="error-ports.1.port">repeats item 1&#39;s port (80)<' in body
        status, body = served.post("/forms/ports/preview", {"name": "edge", "ports.0.port": "80",
                                                            "ports.1.port": "443"}, ADMIN)
        assert status == 200, body
        assert "| create | `edge-80` | directory |" in body and "| create | `edge-443` | directory |" in body
    finally:
        served.close()


def test_when_every_session_slot_is_taken_the_page_says_busy(tmp_path: Path, ops: OpsRepo) -> None:
    """Sessions (each with a template worker) are capped: with no free slot the app answers 503 + Retry-After
    instead of starting another process (in-process ASGI client over the real app and repository)."""
    from starlette.testclient import TestClient

    from reconcilers.forms.web import web_app

    env = ReconcilerEnv(data_dir=tmp_path / "data", evaluator=ops.evaluator, revisions=ops.source,
                        git_writer=ops.writer)
    with TestClient(web_app(env, sessions=0, slot_wait=0.05)) as client:
        busy = client.get("/local-service")
        assert busy.status_code == 503 and busy.headers["retry-after"] == "5"
    with TestClient(web_app(env, sessions=1, slot_wait=0.05)) as client:
        assert client.get("/local-service").status_code == 200
        assert client.get("/local-service").status_code == 200     # the slot came back


def test_a_preview_token_is_one_time_and_bound_to_who_previewed(served: Served, ops: OpsRepo) -> None:
    """Another admin cannot submit alice's preview; alice can, once; a made-up token is refused."""
    fields = {"name": "web", "port": "9200", "workers": "2", "runtime": "python", "owner": "platform"}
    status, page = served.post("/forms/local-service/preview", fields, ADMIN)
    assert status == 200, page
    token = page.split('name="token" value="')[1].split('"')[0]
    assert served.post("/forms/local-service/submit", {"token": token}, OTHER_ADMIN)[0] == 409
    assert served.post("/forms/local-service/submit", {"token": token}, ADMIN)[0] == 200
    assert served.post("/forms/local-service/submit", {"token": token}, ADMIN)[0] == 409
    assert served.post("/forms/local-service/submit", {"token": "made-up"}, ADMIN)[0] == 409
    branches = git(ops.work.path, "for-each-ref", "--format=%(refname)", "refs/heads/forms").splitlines()
    assert len(branches) == 1


def test_submitting_without_the_daemons_gate_is_denied(tmp_path: Path, ops: OpsRepo) -> None:
    """The app mounted with nothing in front (no `authorize` in the scope) refuses to submit: fail closed."""
    from starlette.testclient import TestClient

    from reconcilers.forms.web import web_app

    env = ReconcilerEnv(data_dir=tmp_path / "data", evaluator=ops.evaluator, revisions=ops.source,
                        git_writer=ops.writer)
    with TestClient(web_app(env)) as client:
        assert client.post("/local-service/submit", data={"token": "x"}).status_code == 403
    assert git(ops.work.path, "for-each-ref", "--format=%(refname)", "refs/heads") == "refs/heads/main"


def test_a_conditional_element_is_not_required_by_the_browser(served: Served) -> None:
    """`command` is asked only when runtime is "command": the page runs no script to know, so its input must
    not carry `required` (it kept Chromium from posting a python service at all); the server still asks for
    it when the condition holds."""
    conn = http.client.HTTPConnection("127.0.0.1", served.server.port, timeout=60)
    conn.request("GET", "/forms/local-service", headers={"Authorization": f"Bearer {ADMIN}"})
    page = conn.getresponse().read().decode()
    conn.close()
    command = page.split('id="f-command"')[1].split(">")[0]
    name = page.split('id="f-name"')[1].split(">")[0]
    assert "required" not in command and "required" in name
    fields = {"name": "web", "port": "9200", "workers": "2", "runtime": "command", "owner": "platform"}
    status, body = served.post("/forms/local-service/preview", fields, ADMIN)
    assert status == 422 and 'id="error-command"' in body
