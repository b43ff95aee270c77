"""The AI backend against a loopback stand-in for an OpenAI-compatible model server (a real HTTP server on
127.0.0.1 answering canned completions: no model can run here). The proposal goes through the same checks as
every backend; a wrong proposal is refused naming the element; passwords are never sent."""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pygit2
import pytest

from reconcilers.forms.ai import Provider, propose
from reconcilers.forms.model import parse_form
from tests.fixtures import git
from tests.proc import ROOT, cli_env
from tests.reconcilers.forms.test_cli import STRATUM


class StandIn:
    """Answers POST /v1/chat/completions with `self.reply` as the message content; keeps the requests."""

    def __init__(self) -> None:
        self.reply: dict[str, Any] = {}
        self.requests: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), **body})
                data = json.dumps({"choices": [{"message": {"role": "assistant",
                                                            "content": json.dumps(outer.reply)}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def model() -> Iterator[StandIn]:
    """The stand-in model server."""
    s = StandIn()
    yield s
    s.close()


def test_the_request_carries_the_form_and_never_a_password(model: StandIn) -> None:
    """The system message describes the elements (not password ones); unknown names in the reply are dropped."""
    form = parse_form("forms/x.toml", '[form]\nname = "x"\ntarget = "infra/{name}.ncl"\ntemplate = "t"\n'
                                      '[[elements]]\nname = "name"\n[[elements]]\nname = "secret"\ntype = "password"\n')
    model.reply = {"name": "web", "secret": "leak", "bogus": 1}
    assert propose(Provider(model.url, "m", "k"), form, "a web thing", {}) == {"name": "web"}
    sent = model.requests[0]
    assert sent["path"] == "/v1/chat/completions" and sent["auth"] == "Bearer k" and sent["model"] == "m"
    assert '"name": "name"' in sent["messages"][0]["content"] and "secret" not in sent["messages"][0]["content"]
    assert sent["messages"][1]["content"] == "a web thing"


def _run(tmp: Path, model: StandIn, *args: str, ok: int = 0) -> subprocess.CompletedProcess[str]:
    config = tmp / "stratumd.toml"
    config.write_text(f'[forms.ai]\nurl = "{model.url}"\nmodel = "stand-in"\n')
    subprocess.run([*STRATUM, "init", str(tmp / "ops")], cwd=ROOT, env={**cli_env(), "HOME": str(tmp)},
                   capture_output=True, timeout=120, check=True)
    done = subprocess.run([*STRATUM, "form", "run", "local-service", *args, "--repo", str(tmp / "ops"),
                           "--data-dir", str(tmp / "data"), "--config", str(config)],
                          cwd=ROOT, env={**cli_env(), "HOME": str(tmp)}, capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == ok, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    return done


def test_a_checked_proposal_becomes_a_branch(tmp_path: Path, model: StandIn) -> None:
    """--ai with --yes: the proposal (plus the form's defaults) is checked, generated and committed."""
    model.reply = {"name": "reports", "port": 9300, "workers": 3}
    done = _run(tmp_path, model, "--ai", "a reports service on 9300 with 3 workers", "--yes")
    branch = done.stdout.split("to branch ")[1].split(":")[0]
    commit = pygit2.Repository(str(tmp_path / "ops")).revparse_single(branch)
    assert '"port":9300' in commit.tree["infra/services/reports.ncl"].data.decode()
    assert "reports service on 9300" in model.requests[0]["messages"][1]["content"]


def test_a_wrong_proposal_is_refused_like_any_answer(tmp_path: Path, model: StandIn) -> None:
    """The model proposes port 80: the same check as the CLI's refuses it, naming the element; no branch."""
    model.reply = {"name": "reports", "port": 80}
    done = _run(tmp_path, model, "--ai", "reports on port 80", "--yes", ok=1)
    assert "port: must be at least 1024" in done.stderr
    assert git(tmp_path / "ops", "for-each-ref", "--format=%(refname)", "refs/heads") == "refs/heads/main"
