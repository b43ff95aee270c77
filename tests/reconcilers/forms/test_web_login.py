"""A person in a browser: /forms/login takes the token once and gives a session cookie (the daemon's gate,
daemon/http/sessions.py); every POST of the session carries its CSRF token; the plan shown is the kernel's.

The forms mount is served as the daemon serves it (build_app + the daemon's AuthMiddleware + uvicorn on
127.0.0.1) over a real repository, driven in Debian's headless Chromium through Playwright. The gate's session
table gets a clock the test moves (an expired session without waiting hours); nothing else is replaced.
Screenshots go to the test's tmp dir; their paths are printed.
"""

from __future__ import annotations

import http.client
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pygit2
import pytest

from daemon.http.auth import AuthMiddleware, HttpPolicy, TokenStore, token_digest
from daemon.http.server import HttpServer, build_app, reconciler_mounts
from daemon.http.sessions import SessionStore
from daemon.run.pr_plan import kernel_planner
from daemon.service.metrics import Metrics
from daemon.settings import Settings
from reconcilers.base import ReconcilerEnv
from reconcilers.forms.reconciler import FormsReconciler
from tests.fixtures import git
from tests.reconcilers.forms.conftest import OpsRepo

ADMIN, READER = "forms-admin-token-0123456789abcdef", "forms-reader-token-0123456789abcdef"
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]
FIELDS = {"name": "checkout", "port": "9100", "workers": "2", "runtime": "command",
          "command": "/usr/bin/checkout --port 9100", "owner": "platform"}


class Site:
    """The forms mount behind the daemon's gate (bearer tokens, Cedar, browser sessions) on a loopback port."""

    def __init__(self, tmp: Path, ops: OpsRepo, kernel: bool = True) -> None:
        tokens = tmp / "tokens"
        tokens.write_text(f"alice:admin:{token_digest(ADMIN)}\nbob:reader:{token_digest(READER)}\n")
        tokens.chmod(0o600)
        self.now = 1000.0
        self.sessions = SessionStore(ttl=3600, clock=lambda: self.now)
        plans = kernel_planner(Settings(repo=str(ops.work.path), branch="main", data_dir=tmp / "data")) \
            if kernel else None
        env = ReconcilerEnv(data_dir=tmp / "data", evaluator=ops.evaluator, revisions=ops.source,
                            git_writer=ops.writer, plans=plans)
        self.reconciler = FormsReconciler(env)
        store, policy = TokenStore(tokens), HttpPolicy()

        self.tokens = store

        def auth(app: Any, mounts: list[str]) -> AuthMiddleware:
            return AuthMiddleware(app, store, policy, mounts, sessions=self.sessions)
        self.server = HttpServer("127.0.0.1:0", build_app(Metrics(), lambda: {"ok": True},
                                                          reconciler_mounts([self.reconciler]), auth=auth))
        self.server.start()
        deadline = time.monotonic() + 60              # a loaded machine starts uvicorn slowly
        while not self.server.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        self.url = f"http://127.0.0.1:{self.server.port}"

    def request(self, method: str, path: str, fields: dict[str, str] | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], str]:
        """(status, headers, body) of one request (no redirect followed)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=300)
        try:
            body = urllib.parse.urlencode(fields) if fields is not None else None
            sent = {**({"Content-Type": "application/x-www-form-urlencoded"} if body is not None else {}),
                    **(headers or {})}
            conn.request(method, path, body=body, headers=sent)
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read().decode()
        finally:
            conn.close()

    def login(self, token: str = ADMIN) -> str:
        """A session cookie (`stratum_session=...`) from POST /forms/login."""
        status, headers, body = self.request("POST", "/forms/login", {"token": token, "next": "/forms/"})
        assert status == 303, body
        return headers["set-cookie"].split(";")[0]

    def close(self) -> None:
        """Stop the listener."""
        self.server.stop()
        self.reconciler.close()


@pytest.fixture
def site(tmp_path: Path, ops: OpsRepo) -> Iterator[Site]:
    """The forms mount, with the kernel's planner as the daemon wires it."""
    s = Site(tmp_path, ops)
    yield s
    s.close()


def _shot(page: Any, tmp: Path, name: str) -> Path:
    path = tmp / f"forms-login-{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


@pytest.mark.slow
def test_a_new_user_logs_in_with_the_token_fills_a_form_and_gets_a_branch(site: Site, ops: OpsRepo,
                                                                          tmp_path: Path) -> None:
    """Chromium with no header of ours: /forms/ sends it to the login page; a wrong token is refused with a
    message saying what to do; the right one opens the forms; fill, preview (the kernel's plan), submit; the
    branch's commit names the person; an expired session goes back to the login page; logging out ends the
    session."""
    from playwright.sync_api import sync_playwright

    main = git(ops.work.path, "rev-parse", "main")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_context().new_page()
        page.set_default_timeout(300_000)         # a preview plans in a child process: slow on a loaded machine
        try:
            page.goto(f"{site.url}/forms/local-service")
            assert "/forms/login?next=" in page.url
            page.fill("#token", "not-the-token")
            page.click("#login")
            assert "That token is not valid" in page.inner_text("#message")
            assert "tokens file" in page.inner_text("#message")
            print("refused login screenshot:", _shot(page, tmp_path, "refused"))
            page.fill("#token", ADMIN)
            page.click("#login")
            assert page.url == f"{site.url}/forms/local-service"        # back where it was going
            cookie = next(c for c in page.context.cookies() if c["name"] == "stratum_session")
            assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/forms"
            assert not cookie["secure"]                                   # plain HTTP on loopback here
            for key, value in FIELDS.items():
                if key == "runtime":
                    page.select_option("#f-runtime", value)
                else:
                    page.fill(f"#f-{key}", value)
            page.click("#preview")
            plan = page.inner_text("#plan")
            assert "Stratum plan for" in plan                             # the kernel's, not the form's own
            assert "| + | create systemd_unit etc/systemd/system/checkout.service (0644) |" in plan
            print("plan screenshot:", _shot(page, tmp_path, "plan"))
            page.click("#submit")
            branch = page.inner_text("#branch")
            assert "Stratum plan for" in page.inner_text("#plan")
            print("submitted screenshot:", _shot(page, tmp_path, "submitted"))
            site.now += 3601                                            # the session's lifetime is over
            page.goto(f"{site.url}/forms/local-service")
            assert "/forms/login?next=%2Fforms%2Flocal-service&expired=1" in page.url
            assert page.inner_text("#message") == "Your session has ended: log in again."
            page.fill("#token", ADMIN)
            page.click("#login")
            assert page.url == f"{site.url}/forms/local-service"
            page.click("#logout")
            assert "/forms/login" in page.url
            page.goto(f"{site.url}/forms/")
            assert "/forms/login" in page.url                            # the session is gone
        except Exception:
            print("screenshot at failure:", _shot(page, tmp_path, "failure"))
            raise
        finally:
            browser.close()
    assert branch.startswith("forms/local-service/")
    assert git(ops.work.path, "rev-parse", "main") == main
    commit = pygit2.Repository(str(ops.work.path)).revparse_single(branch).peel(pygit2.Commit)
    assert "Submitted-by: alice (http)" in commit.message
    blob = commit.tree["infra/services/checkout.ncl"]
    assert isinstance(blob, pygit2.Blob) and "/usr/bin/checkout --port 9100" in blob.data.decode()
    assert len(site.sessions) == 0


def test_a_post_without_the_sessions_csrf_token_is_refused(site: Site, ops: OpsRepo) -> None:
    """A cookie alone does not submit: no CSRF token or a wrong one is 403, another origin is 403; with the
    token taken from the page, the same POST is served. Bearer clients need none."""
    cookie = site.login()
    status, _, page = site.request("GET", "/forms/local-service", headers={"Cookie": cookie})
    assert status == 200
    csrf = page.split('name="csrf" value="')[1].split('"')[0]
    bad = {**FIELDS, "port": "80"}          # refused by the form's check: no planning needed to tell apart
    assert site.request("POST", "/forms/local-service/preview", bad, {"Cookie": cookie})[0] == 403
    assert site.request("POST", "/forms/local-service/preview", {**bad, "csrf": "guess"}, {"Cookie": cookie})[0] == 403
    status, _, body = site.request("POST", "/forms/local-service/preview", {**bad, "csrf": csrf},
                                   {"Cookie": cookie, "Origin": "http://127.0.0.1:1"})
    assert status == 403 and "another origin" in body
    status, _, body = site.request("POST", "/forms/local-service/preview", {**bad, "csrf": csrf}, {"Cookie": cookie})
    assert status == 422 and 'id="error-port"' in body
    assert site.request("POST", "/forms/local-service/submit", {"token": "x"}, {"Cookie": cookie})[0] == 403
    assert site.request("POST", "/forms/logout", {}, {"Cookie": cookie})[0] == 403    # logout needs it too
    status, _, body = site.request("POST", "/forms/local-service/preview", bad,
                                   {"Authorization": f"Bearer {ADMIN}"})
    assert status == 422
    assert git(ops.work.path, "for-each-ref", "--format=%(refname)", "refs/heads") == "refs/heads/main"


def test_an_expired_or_revoked_session_goes_back_to_the_login_page(site: Site, tmp_path: Path) -> None:
    """Past its lifetime a session is gone: a page asks to log in again (saying why), a script gets 401; a
    session whose token left the tokens file ends at its next request."""
    cookie = site.login()
    assert site.request("GET", "/forms/", headers={"Cookie": cookie})[0] == 200
    site.now += 3601
    status, headers, _ = site.request("GET", "/forms/local-service", headers={"Cookie": cookie, "Accept": "text/html"})
    assert status == 303
    assert headers["location"] == "/forms/login?next=%2Fforms%2Flocal-service&expired=1"
    assert "Max-Age=0" in headers["set-cookie"]
    status, _, body = site.request("GET", headers["location"])
    assert status == 200 and "Your session has ended: log in again." in body
    assert site.request("GET", "/forms/")[0] == 401                    # a script without a token: as before
    cookie = site.login()
    (tmp_path / "tokens").write_text(f"bob:reader:{token_digest(READER)}\n")   # alice's token revoked,
    site.tokens.replace(site.tokens.read())                          # read again as the daemon does on SIGHUP
    status, headers, _ = site.request("GET", "/forms/", headers={"Cookie": cookie, "Accept": "text/html"})
    assert status == 303 and "expired=1" in headers["location"]
    assert len(site.sessions) == 0


def test_a_login_may_only_go_back_into_the_mount(site: Site) -> None:
    """`next` naming another site or path falls back to /forms/ (no open redirect); a reader's token logs in
    (reading is allowed), a made-up one gets 401 with the page."""
    for target in ("https://evil.example/", "//evil.example/forms/", "/metrics", "/forms/../metrics"):
        status, headers, _ = site.request("POST", "/forms/login", {"token": READER, "next": target})
        assert status == 303 and headers["location"] == "/forms/", target
    status, _, body = site.request("POST", "/forms/login", {"token": "nope", "next": "/forms/"})
    assert status == 401 and "That token is not valid" in body


def test_the_web_preview_shows_the_kernels_plan_of_the_would_be_branch(site: Site, ops: OpsRepo) -> None:
    """The plan page is `stratum plan --base --head --format markdown` of the commit submitting would make:
    the kernel's header, the resource ids and the action kinds; no branch is made by previewing."""
    status, _, body = site.request("POST", "/forms/local-service/preview", FIELDS,
                                   {"Authorization": f"Bearer {ADMIN}"})
    assert status == 200, body
    plan = body.split('<pre id="plan">')[1].split("</pre>")[0]
    assert "stratum-plan part 1/1" in plan and "Stratum plan for" in plan
    base = git(ops.work.path, "rev-parse", "main")
    assert f"against `{base[:12]}`" in plan
    assert "#### infra: 3 to create" in plan
    assert "| + | create systemd_unit etc/systemd/system/checkout.service (0644) |" in plan
    assert "| + | create file srv/checkout/config.toml (0640) | checkout-dir |" in plan
    assert "create `infra:checkout-service`" in plan        # change control, as the pull request shows it
    assert git(ops.work.path, "for-each-ref", "--format=%(refname)", "refs/heads") == "refs/heads/main"


def test_the_session_table_is_bounded_and_session_ttl_is_a_checked_host_setting() -> None:
    """At most `limit` sessions (the oldest goes first), each for `ttl` seconds; `[http] session_ttl` outside
    one second .. one week is refused at start, naming the key."""
    from daemon.errors import SettingsError
    from daemon.http.config import http_settings

    now = [0.0]
    store = SessionStore(ttl=10, limit=3, clock=lambda: now[0])
    opened = [store.open(token_digest(ADMIN), "/forms")[0] for _ in range(5)]
    assert len(store) == 3
    assert store.find(opened[0], "/forms") is None and store.find(opened[4], "/forms") is not None
    assert store.find(opened[4], "/other") is None                 # a session is for its mount only
    now[0] = 10.0
    assert store.find(opened[4], "/forms") is None and len(store) == 0
    assert http_settings({"session_ttl": 60}).session_ttl == 60.0
    for bad in (0, -1, True, "8h", 8 * 86400):
        with pytest.raises(SettingsError, match="session_ttl"):
            http_settings({"session_ttl": bad})
