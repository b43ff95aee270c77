"""Agent-task tools on the knowledge MCP server (registered there by one call): `task_pending` lists the runs
waiting for approval; with the host's MCP writes on (`[knowledge] mcp_writes`), `task_approve` and
`task_reject` leave a request the agents service applies within a second, naming the authenticated caller
(an anonymous caller is refused). Reads come from the status snapshot the service keeps, so the MCP server
never opens the agents' DuckDB file the service holds."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mcp.server.mcpserver import Context

from reconcilers.agents.service import status_path, submit_request
from reconcilers.errors import StratumError


class ApprovalError(StratumError):
    """An approval the MCP caller may not make, or about a run that does not wait."""


def pending(data_dir: Path) -> list[dict[str, Any]]:
    """Runs waiting for approval, from the service's status snapshot (empty when no service ran here)."""
    path = status_path(data_dir)
    if not path.exists():
        return []
    return list(json.loads(path.read_text()).get("pending", []))


def decide(data_dir: Path, verb: str, run_id: str, principal: str | None) -> dict[str, Any]:
    """Approve or reject `run_id` for `principal` (a request the service applies)."""
    if not principal:
        raise ApprovalError("approving agent tasks over MCP needs an authenticated caller, and this request has "
                            "none", hint="configure the listener's bearer tokens for /mcp")
    if run_id not in {str(r.get("id")) for r in pending(data_dir)}:
        raise ApprovalError(f"run {run_id} is not waiting for approval", hint="task_pending lists the runs that wait")
    submit_request(data_dir, verb, run_id, by=principal)
    return {"run": run_id, "verb": verb, "by": principal, "result": "requested"}


def register(server: Any, tool: Callable[[Any], Callable[[Any], Any]], data_dir: Callable[[], Path], *,
             writes: bool, principal: Callable[[Any], str | None]) -> None:
    """Add the tools to `server` with the MCP server's own `tool` decorator (errors become tool errors)."""
    @tool(server)
    def task_pending() -> dict[str, Any]:
        """Agent task runs waiting for approval (`stratum task pending`)."""
        return {"pending": pending(data_dir())}

    if not writes:
        return

    @tool(server)
    def task_approve(run_id: str, ctx: Context[Any]) -> dict[str, Any]:
        """Let an agent task run that waits for approval go (the caller is recorded)."""
        return decide(data_dir(), "approve", run_id, principal(ctx))

    @tool(server)
    def task_reject(run_id: str, ctx: Context[Any]) -> dict[str, Any]:
        """Refuse an agent task run that waits for approval (the caller is recorded)."""
        return decide(data_dir(), "reject", run_id, principal(ctx))
