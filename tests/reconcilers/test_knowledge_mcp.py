"""The MCP server, through the official SDK client: over stdio (spawning `kb mcp`) and over streamable HTTP."""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pygit2
import pytest
import uvicorn
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.types import TextContent, TextResourceContents

from daemon import __version__
from daemon.git.source import GitSource
from daemon.http.server import build_app, reconciler_mounts
from daemon.index.store import Index
from daemon.run.workspace import workspace
from daemon.service.metrics import Metrics
from reconcilers.base import ReconcilerEnv
from reconcilers.knowledge.reconciler import KnowledgeReconciler
from tests.fixtures import WorkRepo, infra, resource

# `stratum` run by this interpreter (the entry point script may belong to another venv)
STRATUM = ["-c", "from daemon.cli.main import main; main()"]


@contextlib.asynccontextmanager
async def _daemon_client(port: int, token: str) -> AsyncIterator[Client]:
    """An MCP client for a real daemon's /mcp, which answers only clients with a bearer token
    (tests.proc.http_token_config makes one). The HTTP client is ours to close."""
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client

    async with create_mcp_http_client(headers={"Authorization": f"Bearer {token}"}) as http_client:
        url = f"http://127.0.0.1:{port}/mcp/"
        async with Client(streamable_http_client(url, http_client=http_client), read_timeout_seconds=60) as client:
            yield client

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def template_repo(tmp_path_factory: pytest.TempPathFactory) -> WorkRepo:
    """A repo holding the shipped example knowledge (repo_template/knowledge)."""
    repo = WorkRepo(tmp_path_factory.mktemp("ops") / "repo")
    files = {str(p.relative_to(ROOT / "repo_template")): p.read_text()
             for p in (ROOT / "repo_template" / "knowledge").rglob("*.md")}
    repo.commit(files, "knowledge")
    return repo


def _text(result: Any) -> Any:
    assert not result.is_error, result.content
    if result.structured_content is not None:
        return result.structured_content.get("result", result.structured_content)
    return json.loads(result.content[0].text)


async def _exercise(client: Client) -> None:
    tools = {t.name for t in (await client.list_tools()).tools}
    assert {"search", "get_node", "list_nodes", "get_guidelines", "related", "export", "runbook_for",
            "recent_runs", "explain_resource"} <= tools
    # Tools that write are off unless the host enables them ([knowledge] mcp_writes).
    assert not {"add_note", "record_decision"} & tools
    assert client.server_info is not None and client.server_info.version == __version__
    found = _text(await client.call_tool("search", {"query": "service returns 502 bad gateway"}))
    assert found["mode"] == "hybrid" and found["results"][0]["title"].startswith("Runbook: hello service")
    node_id = found["results"][0]["id"]
    node = _text(await client.call_tool("get_node", {"id": node_id}))
    assert any(link["resolved"] == "infra:app-service" for link in node["links"])
    runbooks = _text(await client.call_tool("runbook_for", {"resource": "app-config"}))
    assert {r["title"] for r in runbooks["results"]} >= {
        "Postmortem: config file became unreadable after a mode change"}
    explained = _text(await client.call_tool("explain_resource", {"resource": "infra:app-config"}))
    assert explained["decisions"][0]["title"].startswith("ADR 0001")
    guidelines = _text(await client.call_tool("get_guidelines", {}))
    assert guidelines["guidelines"][0]["category"] == "change-review"
    resource = await client.read_resource(f"stratum://node/{node_id}")
    content = resource.contents[0]
    assert isinstance(content, TextResourceContents) and "type: note" in content.text
    prompt = await client.get_prompt("postmortem", {"incident": "502s after deploy", "resource": "app-service"})
    message = prompt.messages[0].content
    assert isinstance(message, TextContent) and "[[infra:app-service]]" in message.text


def test_the_sdk_client_uses_every_surface_over_stdio(template_repo: WorkRepo, tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    params = StdioServerParameters(
        command=sys.executable, args=[*STRATUM, "kb", "mcp", "--repo", str(template_repo.path),
                                      "--data-dir", str(tmp_path / "data")], env=env, cwd=str(ROOT))

    async def main() -> None:
        async with Client(params, read_timeout_seconds=120) as client:
            await _exercise(client)

    anyio.run(main)


def test_stdio_writes_when_enabled_commit_to_a_side_branch_never_the_work_tree(template_repo: WorkRepo,
                                                                               tmp_path: Path) -> None:
    """With `[knowledge] mcp_writes = true` in the host settings, add_note commits the node to a new branch
    stratum/mcp/... by the daemon's identity with a Submitted-by trailer; the work tree and main stay as they
    were."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "stratumd.toml").write_text("[knowledge]\nmcp_writes = true\n")
    repo = pygit2.Repository(str(template_repo.path))
    main_before, status_before = repo.references["refs/heads/main"].target, repo.status()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    params = StdioServerParameters(command=sys.executable, args=[
        *STRATUM, "kb", "mcp", "--repo", str(template_repo.path), "--data-dir", str(data)], env=env,
        cwd=str(ROOT))

    async def main() -> dict[str, Any]:
        async with Client(params, read_timeout_seconds=120) as client:
            return dict(_text(await client.call_tool("add_note", {
                "title": "Disk full on web-1", "body": "df -h", "tags": ["runbook"]})))

    added = anyio.run(main)
    assert added["branch"].startswith("stratum/mcp/")
    commit = repo.references[f"refs/heads/{added['branch']}"].peel(pygit2.Commit)
    assert str(commit.id) == added["commit"] and commit.parents[0].id == main_before
    assert commit.author.name == "stratumd" and f"Submitted-by: local:{getpass.getuser()}" in commit.message
    blob = commit.tree[added["path"]]
    assert isinstance(blob, pygit2.Blob) and "Disk full on web-1" in blob.data.decode()
    assert repo.references["refs/heads/main"].target == main_before
    assert repo.status() == status_before and not (template_repo.path / added["path"]).exists()


def _env(repo: WorkRepo, data: Path, index: Index, host: dict[str, Any] | None = None) -> ReconcilerEnv:
    """The env the daemon hands the knowledge reconciler (daemon/run/runtime.py): its index, host settings, version
    and the workspace its MCP interface serves from."""
    host = host or {}
    source = GitSource(str(repo.path), "main", data)
    return ReconcilerEnv(data, settings=host, index=index, revisions=source, version=__version__,
                         workspace=workspace(source, index, data, host))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture()
def daemon_http(template_repo: WorkRepo, tmp_path: Path) -> Iterator[str]:
    """The reconciler's ASGI app mounted at /mcp on the daemon's HTTP app, served by uvicorn on loopback."""
    index = Index(tmp_path / "data" / "index.duckdb")
    rec = KnowledgeReconciler(_env(template_repo, tmp_path / "data", index))
    snap = GitSource(str(template_repo.path), "main", tmp_path / "data").snapshot("main")
    desired = rec.load(snap)
    assert rec.validate(desired) == []
    rec.index(desired, index, snap.revision)
    rec.wait_embedded()
    # Mounted exactly as the daemon mounts it: lazily, built on the first request.
    mounts = reconciler_mounts([rec])
    assert [m[0] for m in mounts] == ["/mcp"]
    prefix = mounts[0][0]
    port = _free_port()
    app = build_app(Metrics(), lambda: {"ok": True}, mounts)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}{prefix}/"
    server.should_exit = True
    thread.join(10)


def test_the_sdk_client_uses_the_daemons_http_transport(daemon_http: str) -> None:
    async def main() -> None:
        async with Client(daemon_http, read_timeout_seconds=60) as client:
            await _exercise(client)

    anyio.run(main)


# -- writes over HTTP: the principal comes from the listener's authentication, never from a header -------------
class Authenticated:
    """Stands where the listener's authentication stands: it sets scope["state"]["principal"] on each request
    it lets through (the hook the daemon's bearer-token auth fills)."""

    def __init__(self, app: Any, principal: str) -> None:
        self.app, self.principal = app, principal

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            scope = {**scope, "state": {**scope.get("state", {}), "principal": self.principal}}
        await self.app(scope, receive, send)


@contextlib.contextmanager
def serving(app: Any) -> Iterator[str]:
    """`app` served by uvicorn on a free loopback port; yields its base URL."""
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def _indexed(repo: WorkRepo, data: Path, host: dict[str, Any]) -> tuple[KnowledgeReconciler, Index]:
    index = Index(data / "index.duckdb")
    rec = KnowledgeReconciler(_env(repo, data, index, host))
    snap = GitSource(str(repo.path), "main", data).snapshot("main")
    desired = rec.load(snap)
    rec.index(desired, index, snap.revision)
    rec.wait_embedded()
    return rec, index


def test_http_writes_commit_to_a_side_branch_as_the_authenticated_principal(template_repo: WorkRepo,
                                                                            tmp_path: Path) -> None:
    """Enabled by the host, record_decision over /mcp commits to stratum/mcp/... with `Submitted-by:` naming the
    principal the authentication layer set; a request without one (whatever its Host header) is refused; the
    watched repo's work tree and main are untouched."""
    rec, index = _indexed(template_repo, tmp_path / "data", {"knowledge": {"mcp_writes": True}})
    repo = pygit2.Repository(str(template_repo.path))
    main_before, status_before = repo.references["refs/heads/main"].target, repo.status()
    mounts = reconciler_mounts([rec])
    args = {"title": "Use ext4 for data volumes", "context": "xfs quotas bit us", "decision": "ext4"}

    async def call(url: str, headers: dict[str, str] | None = None) -> Any:
        async with Client(url + "/mcp/", read_timeout_seconds=60) as client:
            return await client.call_tool("record_decision", args)

    try:
        with serving(build_app(Metrics(), lambda: {"ok": True}, mounts)) as url:
            refused = anyio.run(call, url)
        assert refused.is_error and "authenticated" in str(refused.content)
        with serving(Authenticated(build_app(Metrics(), lambda: {"ok": True}, reconciler_mounts([rec])),
                                   "alice@example.com")) as url:
            made = _text(anyio.run(call, url))
    finally:
        rec.close()
        index.close()
    commit = repo.references[f"refs/heads/{made['branch']}"].peel(pygit2.Commit)
    assert made["branch"].startswith("stratum/mcp/") and commit.parents[0].id == main_before
    assert commit.message.rstrip().endswith("Submitted-by: alice@example.com")
    assert repo.references["refs/heads/main"].target == main_before and repo.status() == status_before


# -- one server: the same answers over stdio and over HTTP ------------------------------------------------------
QUERIES = ["web app is unreachable, gateway error", "who may approve access rights", "zebra giraffe savanna"]


async def _answers(client: Client) -> dict[str, Any]:
    out: dict[str, Any] = {"tools": sorted(t.name for t in (await client.list_tools()).tools),
                           "version": client.server_info.version if client.server_info else None}
    for q in QUERIES:
        out[q] = _text(await client.call_tool("search", {"query": q}))
    out["runs"] = _text(await client.call_tool("recent_runs", {}))
    out["nodes"] = _text(await client.call_tool("list_nodes", {}))
    return out


def test_stdio_and_http_give_the_same_answers(tmp_path: Path, evaluator: Any) -> None:
    """After a real pipeline run, the daemon's /mcp and `stratum kb mcp` over the same data directory answer
    search (same default threshold), recent_runs (the run is there on both) and list_nodes identically, and
    report the same server version."""
    from daemon.run.pipeline import Pipeline

    repo = WorkRepo(tmp_path / "ops")
    repo.commit({str(p.relative_to(ROOT / "repo_template")): p.read_text()
                 for p in (ROOT / "repo_template" / "knowledge").rglob("*.md")}, "knowledge")
    data = tmp_path / "data"
    index = Index(data / "index.duckdb")
    rec = KnowledgeReconciler(_env(repo, data, index))
    pipeline = Pipeline(source=GitSource(str(repo.path), "main", data), index=index, reconcilers={"knowledge": rec},
                        evaluator=evaluator, notes=False)
    try:
        assert pipeline.run("main").status == "succeeded"
        pipeline.wait_hooks()
        rec.wait_embedded()
        with serving(build_app(Metrics(), lambda: {"ok": True}, reconciler_mounts([rec]))) as url:
            async def over_http() -> dict[str, Any]:
                async with Client(url + "/mcp/", read_timeout_seconds=60) as client:
                    return await _answers(client)
            http = anyio.run(over_http)
    finally:
        pipeline.close()
        rec.close()
        index.close()
    params = StdioServerParameters(command=sys.executable, args=[
        *STRATUM, "kb", "mcp", "--repo", str(repo.path), "--data-dir", str(data)],
        env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}, cwd=str(ROOT))

    async def over_stdio() -> dict[str, Any]:
        async with Client(params, read_timeout_seconds=120) as client:
            return await _answers(client)

    stdio = anyio.run(over_stdio)
    assert http["runs"]["runs"] and http["runs"]["runs"][0]["status"] == "succeeded"
    assert http[QUERIES[0]]["results"] and not http[QUERIES[2]]["results"]
    for key in http:
        assert stdio[key] == http[key], key
    # `stratum kb search` ranks exactly as both MCP transports do (one searcher, one set of defaults).
    for q in QUERIES:
        done = subprocess.run([sys.executable, *STRATUM, "kb", "search", q, "--output", "json", "--repo",
                               str(repo.path), "--data-dir", str(data)], cwd=ROOT, capture_output=True, text=True,
                              env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}, timeout=300)
        assert done.returncode == 0, done.stderr
        cli = json.loads(done.stdout)["results"]
        assert [(r["id"], round(r["score"], 4)) for r in cli] == \
            [(r["id"], round(r["score"], 4)) for r in http[q]["results"]], q


# -- after a restart the daemon serves the last good revision at once ---------------------------------------------
def test_mcp_answers_right_after_a_daemon_restart(tmp_path: Path) -> None:
    """A real stratumd applies a commit, stops, starts again: before any new run, /mcp lists the nodes of the
    last good revision (it used to answer `Error executing tool` until the next run)."""
    from tests.proc import DaemonProc, http_token_config, wait_for

    repo = WorkRepo(tmp_path / "ops")
    head = repo.commit({
        "stratum.ncl": '{ knowledge = { embedding = { provider = "none" } } }\n',
        **{str(p.relative_to(ROOT / "repo_template")): p.read_text()
           for p in (ROOT / "repo_template" / "knowledge").rglob("*.md")}}, "knowledge")
    data = tmp_path / "data"

    config, token = http_token_config(tmp_path)

    async def titles(port: int) -> list[str]:
        async with _daemon_client(port, token) as client:
            listed = _text(await client.call_tool("list_nodes", {"type": "decision"}))
            return sorted(n["title"] for n in listed["nodes"])

    daemon = DaemonProc(str(repo.path), data, tmp_path / "root", "--config", str(config))
    try:
        assert daemon.wait_run(head, 60)["status"] == "succeeded"
        port = int(daemon.call("status")["status"]["daemon"]["http_port"])
        before = anyio.run(titles, port)
    finally:
        assert daemon.stop() == 0
    assert before and before[0].startswith("ADR 0001")
    daemon = DaemonProc(str(repo.path), data, tmp_path / "root", "--config", str(config))
    try:
        runs = len(daemon.runs())
        port = int(wait_for(lambda: daemon.call("status")["status"]["daemon"]["http_port"], 30))
        assert anyio.run(titles, port) == before
        assert len(daemon.runs()) == runs          # served from the index, not from a run since the restart
    finally:
        daemon.stop()
    # The MCP SDK's own logging (rich-formatted "Processing request of type ...") stays out of the JSON log,
    # and a SIGTERM while MCP sessions existed ends without a traceback.
    lines = [line for line in daemon.log().splitlines() if line.strip()]
    assert lines and all(line.startswith("{") for line in lines), [x for x in lines if not x.startswith("{")][:5]
    assert "Traceback" not in daemon.log()


def test_stdio_beside_a_running_daemon_reports_the_daemons_runs(tmp_path: Path) -> None:
    """`stratum kb mcp` started while the daemon holds the index answers recent_runs with the daemon's runs and
    their actions, exactly as the daemon's /mcp does (it used to return none)."""
    from tests.proc import DaemonProc, http_token_config

    repo = WorkRepo(tmp_path / "ops")
    config, token = http_token_config(tmp_path)
    head = repo.commit({
        "stratum.ncl": '{ knowledge = { embedding = { provider = "none" } } }\n',
        "infra/motd.ncl": infra(resource("motd", "file", path="etc/motd", content="hi\n")),
        **{str(p.relative_to(ROOT / "repo_template")): p.read_text()
           for p in (ROOT / "repo_template" / "knowledge").rglob("*.md")}}, "knowledge")
    data = tmp_path / "data"

    async def runs(client: Client) -> Any:
        return _text(await client.call_tool("recent_runs", {}))["runs"]

    async def over_http(port: int) -> Any:
        async with _daemon_client(port, token) as client:
            return await runs(client)

    params = StdioServerParameters(command=sys.executable, args=[
        *STRATUM, "kb", "mcp", "--repo", str(repo.path), "--data-dir", str(data)],
        env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}, cwd=str(ROOT))

    async def over_stdio() -> Any:
        async with Client(params, read_timeout_seconds=120) as client:
            return await runs(client)

    daemon = DaemonProc(str(repo.path), data, tmp_path / "root", "--config", str(config))
    try:
        assert daemon.wait_run(head, 60)["status"] == "succeeded"
        port = int(daemon.call("status")["status"]["daemon"]["http_port"])
        http = anyio.run(over_http, port)
        stdio = anyio.run(over_stdio)
    finally:
        daemon.stop()
    assert http and http[0]["actions"] and http[0]["actions"][0]["target"] == "motd"
    assert stdio == http


def test_a_proposal_survives_the_next_fetch_of_a_watched_remote(tmp_path: Path) -> None:
    """Issue 16 item 9: a daemon watching a remote URL commits an MCP proposal to its mirror and pushes the side
    branch to the remote, so the next fetch (which prunes what the remote lacks) keeps it and people can review
    it there; it used to vanish at the next fetch."""
    from tests.fixtures import bare_repo
    from tests.proc import DaemonProc, http_token_config

    remote = bare_repo(tmp_path / "remote.git")
    work = WorkRepo(tmp_path / "work", remote=remote)
    work.commit({
        "stratum.ncl": '{ knowledge = { embedding = { provider = "none" } } }\n',
        **{str(p.relative_to(ROOT / "repo_template")): p.read_text()
           for p in (ROOT / "repo_template" / "knowledge").rglob("*.md")}}, "knowledge")
    work.push()
    config, token = http_token_config(tmp_path, extra="[knowledge]\nmcp_writes = true\n")
    args = {"title": "Use ext4 for data volumes", "context": "xfs quotas bit us", "decision": "ext4"}

    async def propose(port: int) -> Any:
        async with _daemon_client(port, token) as client:
            return _text(await client.call_tool("record_decision", args))

    daemon = DaemonProc(f"file://{remote}", tmp_path / "data", tmp_path / "root", "--interval", "0.3",
                        "--config", str(config))
    try:
        head = pygit2.Repository(str(remote)).references["refs/heads/main"].target
        assert daemon.wait_run(str(head), 60)["status"] == "succeeded"
        port = int(daemon.call("status")["status"]["daemon"]["http_port"])
        made = anyio.run(propose, port)
        later = work.commit({"knowledge/notes/later.md": "---\ntitle: later\ntype: note\n---\nlater\n"}, "later")
        work.push()
        daemon.wait_run(later, 60)                    # the daemon fetched (with prune) after the proposal
    finally:
        daemon.stop()
    ref = f"refs/heads/{made['branch']}"
    pushed = pygit2.Repository(str(remote)).references.get(ref)
    assert pushed is not None and str(pushed.target) == made["commit"]
    assert pygit2.Repository(str(tmp_path / "data" / "mirror.git")).references.get(ref) is not None
