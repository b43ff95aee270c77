"""Knowledge for agents: runbooks and decisions from knowledge search, as prompt helpers and tool handlers.

Built over any object with the KnowledgeBase's `search(query, mode=, limit=, filters=)` and `node(ref)`: in the
daemon, a read-only view of the daemon's own index (`from_daemon`); in tests, a KnowledgeBase over a real repo.
Answers are short text (title, id, path, snippet), bounded by the prompt helpers' own caps.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from reconcilers.agents.prompts import Context
from reconcilers.agents.queue import Message
from reconcilers.agents.tools import ToolHost

BODY_CHARS = 1500            # characters of the best match's body given to the model


def _hits(kb: Any, query: str, types: tuple[str, ...], limit: int = 3) -> str:
    from reconcilers.knowledge.search import Filters

    result = kb.search(query, mode="hybrid", limit=limit, filters=Filters(types=types) if types else None)
    lines = []
    for rank, hit in enumerate(result.hits):
        node = hit.node
        lines.append(f"- {node.get('title', '')} (id {node.get('id', '')}, {node.get('path', '')}): "
                     f"{hit.snippet.strip()}")
        if rank == 0:
            # The best match's steps themselves: a runbook is only useful with its body.
            try:
                lines.append(kb.node(str(node.get("id", ""))).body.strip()[:BODY_CHARS])
            except Exception:  # noqa: BLE001 a node gone since the search: its summary line stays
                pass
    return "\n".join(lines) or f"(no knowledge matches {query!r})"


def helpers(kb: Any) -> tuple[Callable[[str], str], Callable[[str], str]]:
    """(runbook(query), decisions(query)) over `kb`."""
    def runbook(query: str) -> str:
        return _hits(kb, query, ("note", "guideline", "pattern"))

    def decisions(query: str) -> str:
        return _hits(kb, query, ("decision",))

    return runbook, decisions


def context_for(kb: Any | None, plan: Callable[[], str] | None = None) -> Callable[[Message], Context]:
    """The prompt context of a delivered run: its inputs and the knowledge helpers."""
    def build(msg: Message) -> Context:
        inputs = dict(msg.spec.get("inputs") or {})
        if kb is None:
            return Context(inputs=inputs, plan=plan or (lambda: ""))
        runbook, decisions = helpers(kb)
        return Context(runbook=runbook, decisions=decisions, plan=plan or (lambda: ""), inputs=inputs)

    return build


def tool_host(kb: Any | None, authorize: Callable[[str, str, Mapping[str, Any]], bool] | None = None,
              plan: Callable[[], str] | None = None, vault: Callable[[str], str] | None = None) -> ToolHost:
    """Tool handlers over `kb` (knowledge.search, knowledge.get), the plan and the secrets port (`vault`:
    reference -> value; asked only once `authorize` allowed the call)."""
    handlers: dict[str, Callable[[Mapping[str, Any]], str]] = {}
    if kb is not None:
        handlers["knowledge.search"] = lambda a: _hits(kb, str(a.get("query", "")), (), 5)
        handlers["knowledge.get"] = lambda a: _node_text(kb, str(a.get("id", "")))
    if plan is not None:
        handlers["plan.read"] = lambda a: plan()
    if vault is not None:
        handlers["vault.read"] = lambda a: vault(str(a.get("reference", "")))
    return ToolHost(handlers, authorize) if authorize is not None else ToolHost(handlers)


def _node_text(kb: Any, ref: str) -> str:
    node = kb.node(ref)
    return f"# {node.title}\n\n{node.body}"


def from_daemon(workspace: Any) -> Any:
    """A read-only KnowledgeBase view over the daemon's workspace (what the MCP server serves)."""
    from reconcilers.knowledge.knowledge_base import KnowledgeBase

    return KnowledgeBase(workspace, follow_index=True, provider=None)
