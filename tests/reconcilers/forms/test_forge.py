"""A pull request for the form's branch, opened through the forge's API when the host configures one: the
loopback forge fake of the PR-plan tests (tests/daemon/test_pr_review.py), taught the two create endpoints."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from reconcilers.forms.forge import Forge
from tests.daemon.test_pr_review import TOKEN, FakeForge, Seen
from tests.proc import ROOT, cli_env
from tests.reconcilers.forms.conftest import OpsRepo
from tests.reconcilers.forms.test_cli import STRATUM

ANSWERS = {"name": "billing", "port": 9000, "workers": 4, "runtime": "python", "restart": True, "owner": "p"}
_CREATE = {"github": re.compile(r"/repos/(?P<repo>[^/]+/[^/]+)/pulls"),
           "gitlab": re.compile(r"/api/v4/projects/(?P<repo>[^/]+)/merge_requests")}


class PullForge(FakeForge):
    """FakeForge plus POST .../pulls (GitHub) and POST .../merge_requests (GitLab), with their auth headers."""

    def __init__(self) -> None:
        self.opened: list[tuple[str, dict[str, object]]] = []
        super().__init__()

    def _handle(self, req: BaseHTTPRequestHandler, method: str) -> None:
        path = urlsplit(req.path).path
        kind = next((k for k, p in _CREATE.items() if p.fullmatch(path)), None)
        if kind is None or method != "POST":
            return super()._handle(req, method)
        body = json.loads(req.rfile.read(int(req.headers["Content-Length"])))
        self.seen.append(Seen(method, req.path, {k.lower(): v for k, v in req.headers.items()}, body))
        if not self._authorized(kind, req):
            return self._reply(req, 401, {"message": "Bad credentials"})
        self.opened.append((kind, body))
        n = len(self.opened)
        return self._reply(req, 201, {"number": n, "html_url": f"{self.url}/octo/ops/pull/{n}"} if kind == "github"
                           else {"iid": n, "web_url": f"{self.url}/group/ops/-/merge_requests/{n}"})


@pytest.fixture
def forge() -> Iterator[PullForge]:
    """The fake forge on loopback."""
    f = PullForge()
    yield f
    f.close()


@pytest.mark.parametrize("kind", ["github", "gitlab"])
def test_a_submission_opens_a_pull_request_with_the_plan(ops: OpsRepo, forge: PullForge, kind: str) -> None:
    """head = the form's branch, base = the watched branch, the plan as its text; the address is returned."""
    api = forge.url if kind == "github" else f"{forge.url}/api/v4"
    session = ops.session(forge=Forge(kind, api, "octo/ops" if kind == "github" else "group/ops", TOKEN))
    try:
        sub = session.submit(session.check(ANSWERS).answers, "alice@example.com")
    finally:
        session.close()
    assert sub.review_error == "" and sub.review.startswith(forge.url)
    (seen_kind, body), = forge.opened
    assert seen_kind == kind
    head, base, text = ((body["head"], body["base"], body["body"]) if kind == "github"
                        else (body["source_branch"], body["target_branch"], body["description"]))
    assert (head, base) == (sub.branch, "main")
    assert "| create | `billing-service` | systemd_unit |" in str(text)
    assert "Submitted-by: alice@example.com" in str(text)


def test_a_refused_pull_request_keeps_the_branch_and_says_why(ops: OpsRepo, forge: PullForge) -> None:
    """A bad token: the forge answers 401, the branch stands, the reason is reported."""
    session = ops.session(forge=Forge("github", forge.url, "octo/ops", "wrong"))
    try:
        sub = session.submit(session.check(ANSWERS).answers, "alice@example.com")
    finally:
        session.close()
    assert sub.review == "" and "401" in sub.review_error
    assert ops.source.resolve(sub.branch) == sub.commit


def test_the_cli_opens_the_pull_request_with_the_kernels_plan(tmp_path: Path, forge: PullForge) -> None:
    """`stratum form run` with [forms.forge]: the request's text is the plan CI would post for it (`stratum plan
    --base --head --format markdown`), and the CLI prints its address."""
    config = tmp_path / "stratumd.toml"
    config.write_text(f'[forms.forge]\nkind = "github"\napi = "{forge.url}"\nrepo = "octo/ops"\n'
                      'token_env = "FORMS_TEST_FORGE_TOKEN"\n')
    env = {**cli_env(), "HOME": str(tmp_path), "FORMS_TEST_FORGE_TOKEN": TOKEN}
    subprocess.run([*STRATUM, "init", str(tmp_path / "ops")], cwd=ROOT, env=env, capture_output=True, timeout=120,
                   check=True)
    (tmp_path / "a.yaml").write_text("name: billing\nport: 9000\n")
    done = subprocess.run([*STRATUM, "form", "run", "local-service", "--answers", str(tmp_path / "a.yaml"),
                           "--repo", str(tmp_path / "ops"), "--data-dir", str(tmp_path / "data"),
                           "--config", str(config)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    (kind, body), = forge.opened
    assert kind == "github" and body["base"] == "main" and str(body["head"]).startswith("forms/local-service/")
    assert "### Stratum plan for" in str(body["body"]) and "#### Change control" in str(body["body"])
    assert f"pull request: {forge.url}/octo/ops/pull/1" in done.stdout
