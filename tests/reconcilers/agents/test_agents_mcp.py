"""Agent-task approvals on the knowledge MCP server (an in-process MCP client, which is the local user as over
stdio): pending runs are listed; an approval names its caller, is applied by the service and recorded as an
event; a run that does not wait, or an anonymous HTTP caller, is refused; without MCP writes there is no
approve tool."""

from __future__ import annotations

import asyncio
import getpass
import json
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
from mcp import Client

from daemon.run.workspace import open_workspace
from reconcilers.agents.mcp_tools import ApprovalError, decide
from reconcilers.agents.model import Agent, AgentsDesired, Provider, Task
from reconcilers.agents.service import AgentService
from reconcilers.knowledge.knowledge_base import KnowledgeBase
from reconcilers.knowledge.mcp_server import build_server
from tests.fixtures import WorkRepo


def call(server: Any, name: str, args: dict[str, Any]) -> tuple[bool, str]:
    """(is_error, text) of one tool call through an in-process MCP client."""
    async def go() -> tuple[bool, str]:
        async with Client(server) as client:
            result = await client.call_tool(name, args)
            return bool(result.is_error), "".join(getattr(c, "text", "") for c in result.content)
    return asyncio.run(go())


def test_pending_runs_and_approvals_over_mcp(tmp_path: Path) -> None:
    """task_pending lists the waiting run; task_approve without an authenticated caller is refused; a request
    by a named caller is applied and the caller recorded."""
    repo = WorkRepo(tmp_path / "repo")
    repo.commit({"README.md": "ops\n"})
    kb = KnowledgeBase(open_workspace(str(repo.path), tmp_path / "data"), provider=None)
    events: list[tuple[str, str]] = []
    svc = AgentService(tmp_path / "data", start_threads=False, events=lambda k, m: events.append((k, m)))
    try:
        gated = Task("restart", "Restart", "devops", command=("true",), approval=True)
        svc.update(AgentsDesired(providers=MappingProxyType({"local": Provider("local", "command")}),
                                 agents=MappingProxyType({"ops": Agent("ops", "devops", ("local",))}),
                                 tasks=MappingProxyType({"restart": gated})))
        run = svc.enqueue_task(gated, "manual", {})
        svc.write_status()
        server = build_server(lambda: kb, writes=True)
        error, text = call(server, "task_pending", {})
        assert not error and [r["id"] for r in json.loads(text)["pending"]] == [run]
        error, text = call(server, "task_approve", {"run_id": run})
        assert not error and json.loads(text)["by"] == f"local:{getpass.getuser()}"
        assert svc.process_requests() == 1
        assert svc.queue.state(run) == "ready"
        assert ("request", f"approve {run} by local:{getpass.getuser()}") in events
        svc.write_status()
        error, text = call(server, "task_reject", {"run_id": run})
        assert error and f"run {run} is not waiting for approval" in text
        with pytest.raises(ApprovalError, match="needs an authenticated caller"):
            decide(tmp_path / "data", "approve", run, None)
        error, _ = call(build_server(lambda: kb, writes=False), "task_approve", {"run_id": run})
        assert error                                  # without MCP writes the tool does not exist
    finally:
        svc.close()
        kb.close()
