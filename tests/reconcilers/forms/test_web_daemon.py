"""The "done means" of the forms issue as a new user meets it: `stratum init` in a fresh HOME, a real `stratumd`
with a tokens file, and a person in Debian's headless Chromium (Playwright) who has only the token: logs in at
/forms/login, runs both shipped forms, sees the kernel's plan and gets reviewable branches. Nothing is replaced:
the daemon wires the gate, the session table and the kernel's planner itself. Screenshots go to the test's tmp
dir; their paths are printed."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pygit2
import pytest

from daemon.http.auth import token_digest
from tests.fixtures import git
from tests.proc import ROOT, DaemonProc, cli_env
from tests.reconcilers.forms.test_cli import STRATUM

TOKEN = "walk-token-0123456789abcdef0123456789"
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]


def _plan(page: Any) -> str:
    """The plan shown after a preview; the page's text in the failure when it shows none (a refusal)."""
    page.wait_for_selector("#plan, .error")
    if page.query_selector("#plan") is None:
        raise AssertionError(f"no plan after the preview; the page says: {page.inner_text('body')[:3000]}")
    return str(page.inner_text("#plan"))


def _shot(page: Any, tmp: Path, name: str) -> Path:
    path = tmp / f"forms-walk-{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


@pytest.mark.slow
def test_a_new_user_runs_both_shipped_forms_from_a_browser_against_a_real_daemon(tmp_path: Path) -> None:
    """Init, start the daemon, log in with the token, submit local-service (its plan: three resources to
    create) and cloud-server (its plan says the host has no such provider yet, and what to add); each
    submission is a branch whose commit names the token's client; main never moves."""
    from playwright.sync_api import sync_playwright

    home = tmp_path / "home"
    home.mkdir()
    ops = tmp_path / "ops"
    subprocess.run([*STRATUM, "init", str(ops)], cwd=ROOT, env={**cli_env(), "HOME": str(home)},
                   capture_output=True, text=True, timeout=300, check=True)
    main = git(ops, "rev-parse", "main")
    tokens = tmp_path / "tokens"
    tokens.write_text(f"dana:admin:{token_digest(TOKEN)}\n")
    tokens.chmod(0o600)
    config = tmp_path / "stratumd.toml"
    config.write_text(f'[http]\ntokens_file = "{tokens}"\n')
    daemon = DaemonProc(str(ops), tmp_path / "data", tmp_path / "root", "--config", str(config),
                        env={"HOME": str(home)})
    branches: list[str] = []
    try:
        assert daemon.wait_run(main, timeout=300)["status"] == "succeeded"
        url = f"http://127.0.0.1:{daemon.call('status')['status']['daemon']['http_port']}"
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_context().new_page()
            page.set_default_timeout(300_000)     # previews plan in a child process: slow on a loaded machine
            try:
                page.goto(f"{url}/forms/")
                assert "/forms/login" in page.url
                page.fill("#token", TOKEN)
                page.click("#login")
                assert page.url == f"{url}/forms/"
                page.click("text=A new local service")
                page.fill("#f-name", "billing")
                page.fill("#f-port", "9000")
                page.fill("#f-owner", "payments")
                page.click("#preview")
                plan = _plan(page)
                assert "Stratum plan for" in plan and "#### infra: 3 to create" in plan, plan
                assert "| + | create systemd_unit etc/systemd/system/billing.service (0644) |" in plan
                print("local-service plan screenshot:", _shot(page, tmp_path, "local-plan"))
                page.click("#submit")
                branches.append(page.inner_text("#branch"))
                page.goto(f"{url}/forms/")
                page.click("text=A cloud server")
                page.fill("#f-name", "web-1")
                page.fill("#f-image", "ami-0123456789abcdef0")
                page.fill("#f-owner", "web")
                page.click("#preview")
                plan = _plan(page)
                assert "**Rejected**" in plan and "'aws' is not configured on this host" in plan, plan
                assert "add [infra.providers.aws] to the host settings" in plan
                print("cloud-server plan screenshot:", _shot(page, tmp_path, "cloud-plan"))
                page.click("#submit")
                branches.append(page.inner_text("#branch"))
                print("submitted screenshot:", _shot(page, tmp_path, "cloud-submitted"))
            except Exception:
                print("screenshot at failure:", _shot(page, tmp_path, "failure"))
                raise
            finally:
                browser.close()
    finally:
        daemon.stop()
    assert git(ops, "rev-parse", "main") == main
    repo = pygit2.Repository(str(ops))
    targets = {"forms/local-service/": "infra/services/billing.ncl", "forms/cloud-server/": "infra/cloud/web-1.ncl"}
    assert [b.split("/")[1] for b in branches] == ["local-service", "cloud-server"]
    for branch in branches:
        commit = repo.revparse_single(branch).peel(pygit2.Commit)
        assert "Submitted-by: dana (http)" in commit.message
        target = next(t for prefix, t in targets.items() if branch.startswith(prefix))
        assert isinstance(commit.tree[target], pygit2.Blob)
