"""The MCP server, through the official SDK client: over stdio (spawning `kb mcp`) and over streamable HTTP."""

from __future__ import annotations

import getpass
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pygit2
import pytest
import uvicorn
from mcp import Client
from mcp.client.stdio import StdioServerParameters

from daemon import __version__
from daemon.http import build_app, reconciler_mounts
from daemon.index import Index
from daemon.metrics import Metrics
from daemon.source import GitSource
from reconcilers.base import ReconcilerEnv
from reconcilers.knowledge.reconciler import KnowledgeReconciler
from tests.fixtures import WorkRepo

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
    assert client.server_info.version == __version__
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
    assert "type: note" in resource.contents[0].text
    prompt = await client.get_prompt("postmortem", {"incident": "502s after deploy", "resource": "app-service"})
    assert "[[infra:app-service]]" in prompt.messages[0].content.text


def test_the_sdk_client_uses_every_surface_over_stdio(template_repo: WorkRepo, tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "daemon.cli.kb", "mcp", "--repo", str(template_repo.path),
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
        "-m", "daemon.cli.kb", "mcp", "--repo", str(template_repo.path), "--data-dir", str(data)], env=env,
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
    assert "Disk full on web-1" in commit.tree[added["path"]].data.decode()
    assert repo.references["refs/heads/main"].target == main_before
    assert repo.status() == status_before and not (template_repo.path / added["path"]).exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture()
def daemon_http(template_repo: WorkRepo, tmp_path: Path) -> Iterator[str]:
    """The reconciler's ASGI app mounted at /mcp on the daemon's HTTP app, served by uvicorn on loopback."""
    rec = KnowledgeReconciler(ReconcilerEnv(tmp_path / "data"))
    index = Index(tmp_path / "data" / "index.duckdb")
    snap = GitSource(str(template_repo.path), "main", tmp_path / "data").snapshot("main")
    desired = rec.load(snap)
    assert rec.validate(desired) == []
    rec.index(desired, index, snap.revision)
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
