"""Pull-request review: `hooks/plan-comment` posts `stratum plan --format markdown` on a GitHub pull request or
a GitLab merge request and keeps it current, and the CI snippets in hooks/ run it. The forge is a real HTTP
server on loopback speaking the few comment endpoints of both APIs; the end-to-end tests run the snippets'
own shell scripts against real repositories and the real `stratum plan`."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import threading
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

import pytest
import yaml

from tests.fixtures import bare_repo, git

ROOT = Path(__file__).resolve().parents[2]
HOOK = ROOT / "hooks" / "plan-comment"
TOKEN = "tok-" + secrets.token_hex(12)
GITHUB_THREAD = "octo/ops#7"
GITLAB_THREAD = "42!3"


# -- a forge on loopback ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Seen:
    """One request the forge received."""

    method: str
    path: str                       # with the query
    headers: dict[str, str]         # names in lower case
    body: Any


_ROUTES = [
    ("github", "list", re.compile(r"/repos/(?P<repo>[^/]+/[^/]+)/issues/(?P<n>\d+)/comments")),
    ("github", "item", re.compile(r"/repos/(?P<repo>[^/]+/[^/]+)/issues/comments/(?P<id>\d+)")),
    ("gitlab", "list", re.compile(r"/api/v4/projects/(?P<repo>[^/]+)/merge_requests/(?P<n>\d+)/notes")),
    ("gitlab", "item", re.compile(r"/api/v4/projects/(?P<repo>[^/]+)/merge_requests/(?P<n>\d+)/notes/(?P<id>\d+)")),
]


class FakeForge:
    """GitHub's issue-comment and GitLab's merge-request-note endpoints over one in-memory store, with their
    authentication headers, pagination (Link, X-Next-Page) and status codes; every request is recorded.

    Threads are keyed "owner/repo#number" (GitHub) and "project!iid" (GitLab). Set `fail` to answer every
    request with that status and JSON body, `link_base` to point next-page links at another server.
    """

    def __init__(self) -> None:
        self.threads: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.seen: list[Seen] = []
        self.fail: tuple[int, dict[str, Any]] | None = None
        self.link_base: str | None = None      # where next-page links point (default: this server)
        self._ids = iter(range(1001, 10**6))
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        """http://127.0.0.1:PORT"""
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def add(self, thread: str, body: str, system: bool = False) -> int:
        """A comment someone (or an earlier run) made; its id."""
        with self._lock:
            cid = next(self._ids)
            self.threads[thread].append({"id": cid, "body": body, "system": system})
            return cid

    def bodies(self, thread: str) -> list[str]:
        """The thread's comment texts, oldest first (system notes left out)."""
        return [c["body"] for c in self.threads[thread] if not c["system"]]

    def ours(self, thread: str) -> dict[int, str]:
        """plan-comment's comments on the thread: id -> body."""
        return {c["id"]: c["body"] for c in self.threads[thread] if c["body"].startswith("<!-- stratum-plan")}

    def writes(self) -> list[tuple[str, str]]:
        """(method, path) of every request that changed something."""
        return [(s.method, s.path) for s in self.seen if s.method != "GET"]

    def close(self) -> None:
        """Stop serving and release the socket (once; later calls do nothing)."""
        if self._thread.is_alive():
            self.server.shutdown()
            self.server.server_close()
            self._thread.join()

    # The request handling: one method per verb, routed by the tables above.
    def _handler(self) -> type[BaseHTTPRequestHandler]:
        forge = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                forge._handle(self, "GET")

            def do_POST(self) -> None:
                forge._handle(self, "POST")

            def do_PATCH(self) -> None:
                forge._handle(self, "PATCH")

            def do_PUT(self) -> None:
                forge._handle(self, "PUT")

            def do_DELETE(self) -> None:
                forge._handle(self, "DELETE")

        return Handler

    def _handle(self, req: BaseHTTPRequestHandler, method: str) -> None:
        length = int(req.headers.get("Content-Length") or 0)
        raw = req.rfile.read(length) if length else b""
        body: Any = json.loads(raw) if raw else None
        with self._lock:
            self.seen.append(Seen(method, req.path, {k.lower(): v for k, v in req.headers.items()}, body))
        if self.fail is not None:
            return self._reply(req, *self.fail)
        url = urlsplit(req.path)
        routed = next(((k, s, m) for k, s, p in _ROUTES if (m := p.fullmatch(url.path))), None)
        if routed is None:
            return self._reply(req, 404, {"message": "Not Found"})
        kind, shape, found = routed
        if not self._authorized(kind, req):
            return self._reply(req, 401, {"message": "Bad credentials" if kind == "github" else "401 Unauthorized"})
        params = found.groupdict()
        sep = "#" if kind == "github" else "!"
        thread = f"{unquote(params['repo'])}{sep}{params['n']}" if "n" in params else None
        with self._lock:
            if shape == "list" and method == "GET":
                return self._page(req, kind, url.path, dict(parse_qsl(url.query)), thread or "")
            if shape == "list" and method == "POST":
                cid = next(self._ids)
                self.threads[thread or ""].append({"id": cid, "body": body["body"], "system": False})
                return self._reply(req, 201, {"id": cid, "body": body["body"]})
            allowed = ("PATCH", "DELETE") if kind == "github" else ("PUT", "DELETE")
            if shape != "item" or method not in allowed:
                return self._reply(req, 405, {"message": "Method Not Allowed"})
            for name, comments in self.threads.items():
                for i, comment in enumerate(comments):
                    if comment["id"] == int(params["id"]) and (thread is None or thread == name):
                        if method == "DELETE":
                            del comments[i]
                            return self._reply(req, 204, None)
                        comment["body"] = body["body"]
                        return self._reply(req, 200, {"id": comment["id"], "body": comment["body"]})
            return self._reply(req, 404, {"message": "Not Found"})

    def _authorized(self, kind: str, req: BaseHTTPRequestHandler) -> bool:
        if kind == "github":
            return req.headers.get("Authorization") == f"Bearer {TOKEN}"
        return TOKEN in (req.headers.get("PRIVATE-TOKEN"), req.headers.get("JOB-TOKEN"))

    def _page(self, req: BaseHTTPRequestHandler, kind: str, path: str, query: dict[str, str], thread: str) -> None:
        per_page = min(int(query.get("per_page", 30 if kind == "github" else 20)), 100)
        page = int(query.get("page", 1))
        items = self.threads[thread]
        chunk = items[(page - 1) * per_page: page * per_page]
        headers = {}
        if page * per_page < len(items):
            next_url = f"{self.link_base or self.url}{path}?{urlencode({**query, 'page': page + 1})}"
            headers["Link"] = f'<{next_url}>; rel="next"'
            if kind == "gitlab":
                headers["X-Next-Page"] = str(page + 1)
        self._reply(req, 200, [{**c} if kind == "gitlab" else {"id": c["id"], "body": c["body"]} for c in chunk],
                    headers)

    @staticmethod
    def _reply(req: BaseHTTPRequestHandler, status: int, data: Any, headers: dict[str, str] | None = None) -> None:
        raw = json.dumps(data).encode() if data is not None else b""
        req.send_response(status)
        for name, value in (headers or {}).items():
            req.send_header(name, value)
        if raw:
            req.send_header("Content-Type", "application/json")
        req.send_header("Content-Length", str(len(raw)))
        req.end_headers()
        req.wfile.write(raw)


@pytest.fixture
def forge() -> Iterator[FakeForge]:
    """A fresh forge on loopback."""
    f = FakeForge()
    yield f
    f.close()


# -- running plan-comment -----------------------------------------------------------------------------------
def _base_env() -> dict[str, str]:
    """The test's environment without anything a real CI would have set."""
    return {k: v for k, v in os.environ.items()
            if k != "CI" and not k.startswith(("GITHUB_", "GITLAB_", "CI_", "GH_", "STRATUM_", "RUNNER_"))}


def github_env(forge: FakeForge, tmp: Path) -> dict[str, str]:
    """What GitHub Actions sets for a pull_request run (plus the token the workflow passes)."""
    event = tmp / "event.json"
    event.write_text(json.dumps({"action": "synchronize", "number": 7, "pull_request": {"number": 7}}))
    return {**_base_env(), "CI": "true", "GITHUB_ACTIONS": "true", "GITHUB_API_URL": forge.url,
            "GITHUB_REPOSITORY": "octo/ops", "GITHUB_EVENT_PATH": str(event), "GITHUB_TOKEN": TOKEN}


def gitlab_env(forge: FakeForge, token_var: str = "STRATUM_GITLAB_TOKEN") -> dict[str, str]:
    """What GitLab CI sets for a merge request pipeline (plus the project token variable)."""
    return {**_base_env(), "CI": "true", "GITLAB_CI": "true", "CI_API_V4_URL": f"{forge.url}/api/v4",
            "CI_PROJECT_ID": "42", "CI_MERGE_REQUEST_IID": "3", token_var: TOKEN}


def plan_comment(env: dict[str, str], plan: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run hooks/plan-comment with the plan on stdin; the token must never be in its output."""
    proc = subprocess.run([sys.executable, str(HOOK), *args], input=plan, env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    assert TOKEN not in proc.stdout + proc.stderr
    return proc


def plan_text(*lines: str, part: str = "") -> str:
    """A markdown plan as `stratum plan` renders one part."""
    return "\n".join([f"### Stratum plan for `0123456789ab`{part}", "", *lines]) + "\n"


@pytest.fixture(params=["github", "gitlab"])
def where(request: pytest.FixtureRequest, forge: FakeForge, tmp_path: Path) -> tuple[dict[str, str], str]:
    """Each forge in turn: its CI environment and the thread plan-comment writes to."""
    if request.param == "github":
        return github_env(forge, tmp_path), GITHUB_THREAD
    return gitlab_env(forge), GITLAB_THREAD


def _load_hook() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("plan_comment", str(HOOK))
    spec = importlib.util.spec_from_loader("plan_comment", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["plan_comment"] = module
    loader.exec_module(module)
    return module


# -- the snippets -------------------------------------------------------------------------------------------
def test_the_github_workflow_is_a_pull_request_job_that_plans_and_comments() -> None:
    """hooks/github-actions.yml parses, runs on pull requests with full history and comment permission,
    installs stratumops and runs the plan and plan-comment."""
    wf = yaml.safe_load((ROOT / "hooks/github-actions.yml").read_text())
    on = wf.get("on", wf.get(True))  # YAML 1.1 reads a bare `on` as true
    assert "pull_request" in on
    assert wf["permissions"]["pull-requests"] == "write"
    steps = wf["jobs"]["plan"]["steps"]
    checkout = next(s for s in steps if s.get("uses", "").startswith("actions/checkout@"))
    assert checkout["with"]["fetch-depth"] == 0
    assert any(s.get("uses", "").startswith("actions/setup-python@") for s in steps)
    assert any("pip install stratumops" in s.get("run", "") for s in steps)
    plan = next(s for s in steps if s.get("id") == "plan")
    assert "stratum plan --repo . --base \"origin/$GITHUB_BASE_REF\" --head HEAD --format markdown" in plan["run"]
    assert "ci/plan-comment" in plan["run"]


def test_the_gitlab_job_is_a_merge_request_job_that_plans_and_comments() -> None:
    """hooks/gitlab-ci.yml parses, runs in merge request pipelines with full history, installs stratumops
    and runs the plan and plan-comment."""
    job = yaml.safe_load((ROOT / "hooks/gitlab-ci.yml").read_text())["stratum-plan"]
    assert job["rules"] == [{"if": '$CI_PIPELINE_SOURCE == "merge_request_event"'}]
    assert job["variables"]["GIT_DEPTH"] == "0"
    assert job["before_script"] == ["pip install stratumops"]
    script = "\n".join(job["script"])
    assert ("stratum plan --repo . --base \"origin/$CI_MERGE_REQUEST_TARGET_BRANCH_NAME\" --head HEAD "
            "--format markdown") in script
    assert "ci/plan-comment" in script


# -- reading the plan ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "parts"), [
    ("### Stratum plan for `a` (part 1/2)\n\nx\n\n\n---\n\n### Stratum plan for `a` (part 2/2)\n\ny\n",
     ["### Stratum plan for `a` (part 1/2)\n\nx", "### Stratum plan for `a` (part 2/2)\n\ny"]),
    ("### Stratum plan for `a`\n\n| | action |\n|---|---|\n\n---\n\nnot a new part\n",
     ["### Stratum plan for `a`\n\n| | action |\n|---|---|\n\n---\n\nnot a new part"]),
    ("<!-- stratum-plan part 1/2 -->\n### one\n\n---\n\n<!-- stratum-plan part 2/2 -->\n### two\n",
     ["### one", "### two"]),
    ('["### one", "### two"]', ["### one", "### two"]),
    ('{"revision": "a", "markdown": ["### one"]}', ["### one"]),
])
def test_parts_are_read_from_each_form_of_plan(text: str, parts: list[str]) -> None:
    """Parts split at stratum's rule-before-heading separator (a rule inside a part stays), at part markers,
    or come from JSON."""
    assert _load_hook().split_parts(text) == parts


@pytest.mark.parametrize(("text", "message"), [
    ("", "the plan is empty"),
    ('{"revision": "a", "actions": []}', "no `markdown` member"),
    ("{not json", "looks like JSON"),
])
def test_a_plan_that_cannot_be_posted_is_refused(forge: FakeForge, tmp_path: Path, text: str, message: str) -> None:
    """Empty output (stratum plan failed) or JSON without markdown exits 2 with the reason; nothing is sent."""
    proc = plan_comment(github_env(forge, tmp_path), text)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert forge.seen == []


# -- posting ------------------------------------------------------------------------------------------------
def test_the_first_run_creates_one_marked_comment(forge: FakeForge, where: tuple[dict[str, str], str]) -> None:
    """A single-part plan becomes one comment that starts with the hidden part marker."""
    env, thread = where
    proc = plan_comment(env, plan_text("No changes."))
    assert proc.returncode == 0, proc.stderr
    assert forge.bodies(thread) == ["<!-- stratum-plan part 1 -->\n" + plan_text("No changes.")]
    assert len(forge.writes()) == 1 and forge.writes()[0][0] == "POST"
    assert "part 1/1: created comment" in proc.stdout


def test_a_second_run_updates_its_comment_in_place(forge: FakeForge, where: tuple[dict[str, str], str]) -> None:
    """The next push edits the same comment (PATCH on GitHub, PUT on GitLab) instead of adding one."""
    env, thread = where
    assert plan_comment(env, plan_text("No changes.")).returncode == 0
    [first] = forge.ours(thread)
    proc = plan_comment(env, plan_text("| ~ | update file etc/motd (0644) |  |"))
    assert proc.returncode == 0, proc.stderr
    assert list(forge.ours(thread)) == [first]
    assert "etc/motd" in forge.ours(thread)[first]
    method, path = forge.writes()[-1]
    assert method == ("PATCH" if thread == GITHUB_THREAD else "PUT") and path.endswith(f"/{first}")


def test_an_unchanged_plan_writes_nothing(forge: FakeForge, where: tuple[dict[str, str], str]) -> None:
    """Re-running on the same plan (a re-run job) only reads."""
    env, _ = where
    assert plan_comment(env, plan_text("No changes.")).returncode == 0
    writes = forge.writes()
    proc = plan_comment(env, plan_text("No changes."))
    assert proc.returncode == 0
    assert forge.writes() == writes
    assert "unchanged" in proc.stdout


def test_a_two_part_plan_takes_two_comments_and_a_shorter_plan_deletes_the_stale_one(
        forge: FakeForge, where: tuple[dict[str, str], str]) -> None:
    """Two parts make two comments, in order; a later one-part plan rewrites the first and deletes the
    second."""
    env, thread = where
    two = plan_text("x", part=" (part 1/2)") + "\n---\n\n" + plan_text("y", part=" (part 2/2)")
    assert plan_comment(env, two).returncode == 0
    first, second = forge.ours(thread)
    assert [b.splitlines()[0:2] for b in forge.bodies(thread)] == [
        ["<!-- stratum-plan part 1 -->", "### Stratum plan for `0123456789ab` (part 1/2)"],
        ["<!-- stratum-plan part 2 -->", "### Stratum plan for `0123456789ab` (part 2/2)"]]
    proc = plan_comment(env, plan_text("No changes."))
    assert proc.returncode == 0, proc.stderr
    assert list(forge.ours(thread)) == [first]
    assert forge.writes()[-1][0] == "DELETE" and forge.writes()[-1][1].endswith(f"/{second}")
    assert f"deleted stale comment {second}" in proc.stdout


def test_other_comments_are_untouched_and_its_own_is_found_past_the_first_page(
        forge: FakeForge, where: tuple[dict[str, str], str]) -> None:
    """People's comments (even one quoting the marker) and system notes are left alone; the earlier plan
    comment is found on page two and updated."""
    env, thread = where
    for i in range(120):
        forge.add(thread, f"review comment {i}")
    forge.add(thread, "> <!-- stratum-plan part 1 -->\n> quoting the bot")
    forge.add(thread, "added 1 commit", system=True)
    ours = forge.add(thread, "<!-- stratum-plan part 1 -->\nold plan\n")
    proc = plan_comment(env, plan_text("No changes."))
    assert proc.returncode == 0, proc.stderr
    assert [m for m, _ in forge.writes()] == ["PATCH" if thread == GITHUB_THREAD else "PUT"]
    assert forge.ours(thread) == {ours: "<!-- stratum-plan part 1 -->\n" + plan_text("No changes.")}
    assert sum(1 for s in forge.seen if s.method == "GET") == 2


def test_the_token_never_follows_a_page_link_to_another_host(forge: FakeForge, tmp_path: Path) -> None:
    """A next-page link to another origin is refused (exit 1) rather than sent the token."""
    for i in range(120):
        forge.add(GITHUB_THREAD, f"review comment {i}")
    forge.link_base = "http://127.0.0.2:9"
    proc = plan_comment(github_env(forge, tmp_path), plan_text("No changes."))
    assert proc.returncode == 1
    assert "refusing to send the token to http://127.0.0.2:9/repos/octo/ops/issues/7/comments" in proc.stderr
    assert forge.writes() == []


def test_a_duplicate_from_racing_runs_is_removed(forge: FakeForge, where: tuple[dict[str, str], str]) -> None:
    """Two copies of part 1 (two jobs raced): the older is updated, the newer deleted."""
    env, thread = where
    older = forge.add(thread, "<!-- stratum-plan part 1 -->\nrun A\n")
    newer = forge.add(thread, "<!-- stratum-plan part 1 -->\nrun B\n")
    assert plan_comment(env, plan_text("No changes.")).returncode == 0
    assert list(forge.ours(thread)) == [older]
    assert forge.writes()[-1][0] == "DELETE" and forge.writes()[-1][1].endswith(f"/{newer}")


# -- the token and errors -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("kind", "header", "value"), [
    ("github", "authorization", f"Bearer {TOKEN}"),
    ("STRATUM_GITLAB_TOKEN", "private-token", TOKEN),
    ("GITLAB_TOKEN", "private-token", TOKEN),
    ("CI_JOB_TOKEN", "job-token", TOKEN),
])
def test_the_token_is_sent_in_its_header_only(forge: FakeForge, tmp_path: Path, kind: str, header: str,
                                              value: str) -> None:
    """Every request carries the token in the forge's header, never in the URL; it is never printed (checked
    by plan_comment on every run)."""
    env = github_env(forge, tmp_path) if kind == "github" else gitlab_env(forge, kind)
    assert plan_comment(env, plan_text("No changes.")).returncode == 0
    assert forge.seen
    for seen in forge.seen:
        assert seen.headers[header] == value
        assert TOKEN not in seen.path
        assert [v for k, v in seen.headers.items() if TOKEN in v and k != header] == []


def test_an_http_error_exits_1_with_what_and_why(forge: FakeForge, where: tuple[dict[str, str], str]) -> None:
    """A refused request exits 1 naming the request, the status, the forge's message and what to do."""
    env, _ = where
    forge.fail = (403, {"message": "Resource not accessible by integration"})
    proc = plan_comment(env, plan_text("No changes."))
    assert proc.returncode == 1
    assert re.search(r"plan-comment: GET http://127\.0\.0\.1:\d+/\S+ failed: HTTP 403 Forbidden: "
                     r"Resource not accessible by integration \(hint: the token may not write comments", proc.stderr)
    assert proc.stdout == ""


def test_a_bad_token_says_so(forge: FakeForge, tmp_path: Path) -> None:
    """A token the forge refuses exits 1 with a 401 hint."""
    env = {**github_env(forge, tmp_path), "GITHUB_TOKEN": "wrong"}
    proc = plan_comment(env, plan_text("No changes."))
    assert proc.returncode == 1
    assert "HTTP 401" in proc.stderr and "Bad credentials" in proc.stderr and "token is missing" in proc.stderr


def test_an_unreachable_forge_exits_1(forge: FakeForge, tmp_path: Path) -> None:
    """No server at the API URL: exit 1, `cannot reach` and the URL."""
    env = github_env(forge, tmp_path)
    forge.close()
    proc = plan_comment(env, plan_text("No changes."))
    assert proc.returncode == 1
    assert f"cannot reach {forge.url}/repos/octo/ops/issues/7/comments" in proc.stderr


@pytest.mark.parametrize(("change", "message"), [
    ({"GITHUB_TOKEN": ""}, "missing a token in GITHUB_TOKEN"),
    ({"GITHUB_API_URL": "http://github.example.com"}, "refusing to send a token over plain http"),
    ({"GITHUB_EVENT_PATH": ""}, "missing --number"),
    ({"GITHUB_ACTIONS": ""}, "say --forge github or --forge gitlab"),
])
def test_usage_errors_exit_2_before_any_request(forge: FakeForge, tmp_path: Path, change: dict[str, str],
                                                message: str) -> None:
    """No token, a token over plain http to a remote host, no request number, no CI: exit 2, nothing sent."""
    env = {k: v for k, v in {**github_env(forge, tmp_path), **change}.items() if v}
    proc = plan_comment(env, plan_text("No changes."))
    assert proc.returncode == 2
    assert message in proc.stderr
    assert forge.seen == []


def test_flags_name_the_request_outside_ci(forge: FakeForge) -> None:
    """--forge, --api-url, --project and --number work without CI variables (a project path is encoded)."""
    env = {**_base_env(), "STRATUM_GITLAB_TOKEN": TOKEN}
    proc = plan_comment(env, plan_text("No changes."), "--forge", "gitlab", "--api-url", f"{forge.url}/api/v4",
                        "--project", "infra/ops", "--number", "9")
    assert proc.returncode == 0, proc.stderr
    assert forge.writes() == [("POST", "/api/v4/projects/infra%2Fops/merge_requests/9/notes")]


# -- end to end: real repositories, the real `stratum plan`, the snippets' own scripts -----------------------
def _shims(tmp: Path) -> Path:
    """A bin directory where `stratum` is this checkout's CLI and `python3` the test's interpreter (what
    `pip install stratumops` and setup-python provide in CI)."""
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    (bin_dir / "stratum").write_text(
        f'#!/bin/sh\nPYTHONPATH="{ROOT}" exec "{sys.executable}" -c '
        '"from daemon.cli.main import main; main()" "$@"\n')
    (bin_dir / "python3").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    for shim in bin_dir.iterdir():
        shim.chmod(0o755)
    return bin_dir


class PullRequest:
    """An ops repo from `stratum init` (with ci/plan-comment committed) on a bare remote: `main` is the base,
    `feature` the pull request; commits are made in `work` and pushed."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.bin = _shims(tmp)
        self.remote = bare_repo(tmp / "remote.git")
        self.work = tmp / "ops"
        init = subprocess.run([str(self.bin / "stratum"), "init", str(self.work)], capture_output=True, text=True,
                              check=False, env={**_base_env(), "XDG_STATE_HOME": str(tmp / "state")})
        assert init.returncode == 0, init.stderr
        (self.work / "ci").mkdir()
        shutil.copy2(HOOK, self.work / "ci" / "plan-comment")
        git(self.work, "add", "-A")
        git(self.work, "commit", "-q", "-m", "post plans on pull requests")
        git(self.work, "remote", "add", "origin", str(self.remote))
        git(self.work, "push", "-q", "origin", "main")
        git(self.work, "checkout", "-q", "-b", "feature")

    def push(self, files: dict[str, str]) -> str:
        """Commit `files` on the feature branch and push it; the commit id."""
        for rel, content in files.items():
            (self.work / rel).parent.mkdir(parents=True, exist_ok=True)
            (self.work / rel).write_text(content)
        git(self.work, "add", "-A")
        git(self.work, "commit", "-q", "-m", "change")
        git(self.work, "push", "-q", "-f", "origin", "feature")
        return git(self.work, "rev-parse", "HEAD")

    def motd(self, text: str, broken: bool = False) -> dict[str, str]:
        """infra/motd.ncl with another greeting, and an unknown field when `broken`."""
        source = (self.work / "infra/motd.ncl").read_text().replace("Welcome!", text)
        if broken:
            source = source.replace("drift = 'correct,", "drift = 'correct,\n      colour = \"blue\",")
        return {"infra/motd.ncl": source}

    def checkout(self, name: str, *clone_args: str) -> Path:
        """A CI checkout of the feature branch's head, detached, with no local branches."""
        path = self.tmp / name
        if path.exists():
            shutil.rmtree(path)
        git(self.tmp, "clone", "-q", *clone_args, str(self.remote), name)
        git(path, "checkout", "-q", "--detach", "origin/feature")
        for branch in git(path, "for-each-ref", "--format=%(refname:short)", "refs/heads/").split():
            git(path, "branch", "-q", "-D", branch)
        return path

    def env(self, base: dict[str, str]) -> dict[str, str]:
        """`base` (a CI's variables) with the shims first on PATH and state in the temp dir."""
        return {**base, "PATH": f"{self.bin}{os.pathsep}{base.get('PATH', os.defpath)}",
                "XDG_STATE_HOME": str(self.tmp / "state"), "HOME": str(self.tmp)}


def _expand(value: str, context: dict[str, str]) -> str:
    """GitHub's `${{ expr }}` from `context`; an expression the test does not know fails it."""
    def one(found: re.Match[str]) -> str:
        assert found.group(1) in context, f"the workflow uses ${{{{ {found.group(1)} }}}}: teach the test"
        return context[found.group(1)]
    return re.sub(r"\$\{\{\s*(.+?)\s*\}\}", one, value)


def _bash(script: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    # What both CIs run: GitHub's `shell: bash` is `bash --noprofile --norc -eo pipefail {0}`.
    return subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=180, check=False)


@pytest.mark.slow
def test_the_github_workflow_posts_and_updates_the_plan_of_a_pull_request(forge: FakeForge, tmp_path: Path) -> None:
    """The workflow's plan step, run as GitHub would in a checkout of the pull request, comments the real plan;
    a broken push updates that comment with the rejection (file:line) and fails the check."""
    pr = PullRequest(tmp_path)
    step = next(s for s in yaml.safe_load((ROOT / "hooks/github-actions.yml").read_text())["jobs"]["plan"]["steps"]
                if s.get("id") == "plan")
    runner_temp = tmp_path / "runner-temp"
    runner_temp.mkdir()
    ci = {**github_env(forge, tmp_path), "GITHUB_BASE_REF": "main", "GITHUB_HEAD_REF": "feature",
          "RUNNER_TEMP": str(runner_temp)}
    ci.pop("GITHUB_TOKEN")  # the step's env: passes it
    ci.update({k: _expand(str(v), {"secrets.GITHUB_TOKEN": TOKEN}) for k, v in step["env"].items()})

    head = pr.push(pr.motd("Hello!"))
    run = _bash(step["run"], pr.checkout("ci"), pr.env(ci))
    assert run.returncode == 0, run.stdout + run.stderr
    [(cid, body)] = forge.ours(GITHUB_THREAD).items()
    assert f"### Stratum plan for `{head[:12]}`" in body
    assert "update file etc/motd" in body

    head = pr.push(pr.motd("Hello!", broken=True))
    run = _bash(step["run"], pr.checkout("ci"), pr.env(ci))
    assert run.returncode == 1, run.stdout + run.stderr
    [(again, body)] = forge.ours(GITHUB_THREAD).items()
    assert again == cid
    assert f"`{head[:12]}`" in body and "**Rejected**" in body and "infra/motd.ncl:" in body
    assert TOKEN not in run.stdout + run.stderr


@pytest.mark.slow
def test_the_gitlab_job_posts_the_plan_of_a_merge_request(forge: FakeForge, tmp_path: Path) -> None:
    """The job's script, run as GitLab would in a single-branch clone of the merge request, fetches the target
    branch and comments the real plan as a note."""
    pr = PullRequest(tmp_path)
    job = yaml.safe_load((ROOT / "hooks/gitlab-ci.yml").read_text())["stratum-plan"]
    ci = {**gitlab_env(forge), "CI_PIPELINE_SOURCE": "merge_request_event",
          "CI_MERGE_REQUEST_TARGET_BRANCH_NAME": "main", "CI_MERGE_REQUEST_SOURCE_BRANCH_NAME": "feature",
          **{k: str(v) for k, v in job["variables"].items()}}
    head = pr.push(pr.motd("Hello!"))
    checkout = pr.checkout("ci", "--single-branch", "--branch", "feature")
    run = _bash("\n".join(job["script"]), checkout, pr.env(ci))
    assert run.returncode == 0, run.stdout + run.stderr
    [body] = forge.ours(GITLAB_THREAD).values()
    assert f"### Stratum plan for `{head[:12]}`" in body
    assert "update file etc/motd" in body


@pytest.mark.slow
def test_a_long_real_plan_is_posted_in_parts_and_shrinks_back(forge: FakeForge, tmp_path: Path) -> None:
    """`stratum plan --format markdown` of 900 new resources prints two parts: two comments, each whole; the
    plan of a small change then leaves one comment, the stale part deleted."""
    pr = PullRequest(tmp_path)
    base = git(pr.work, "rev-parse", "main")
    rows = [f"    generated-{i:04d} = {{ kind = 'file, path = \"srv/generated/some/deeper/dir/file-{i:04d}.conf\", "
            'content = "x" },' for i in range(900)]
    big = pr.push({"infra/many.ncl": "{\n  resources = {\n" + "\n".join(rows) + "\n  },\n}\n"})
    env = pr.env(github_env(forge, tmp_path))

    def plan(head: str) -> str:
        proc = subprocess.run(["stratum", "plan", "--repo", str(pr.work), "--base", base, "--head", head,
                               "--format", "markdown", "--data-dir", str(tmp_path / "data")],
                              env=env, capture_output=True, text=True, timeout=180, check=False)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    assert plan_comment(env, plan(big)).returncode == 0
    bodies = list(forge.ours(GITHUB_THREAD).values())
    assert [b.splitlines()[:2] for b in bodies] == [
        ["<!-- stratum-plan part 1 -->", f"### Stratum plan for `{big[:12]}` against `{base[:12]}` (part 1/2)"],
        ["<!-- stratum-plan part 2 -->", f"### Stratum plan for `{big[:12]}` against `{base[:12]}` (part 2/2)"]]
    assert all(len(b) <= 65_536 for b in bodies)
    assert sum(b.count("srv/generated/") for b in bodies) == 900
    assert not any(b.rstrip().endswith("---") for b in bodies)

    git(pr.work, "reset", "-q", "--hard", base)
    small = pr.push(pr.motd("Hello!"))
    proc = plan_comment(env, plan(small))
    assert proc.returncode == 0, proc.stderr
    [body] = forge.ours(GITHUB_THREAD).values()
    assert f"`{small[:12]}`" in body and "update file etc/motd" in body
    assert "deleted stale comment" in proc.stdout
