"""The MCP server: knowledge tools, node resources and prompt templates for AI assistants.

`stratum kb mcp` serves it over stdio; the daemon mounts the streamable HTTP transport at /mcp. Tools follow
Kogral's surface (search, get_node, list_nodes, get_guidelines, related, add_note, record_decision, export)
plus ops tools: runbook_for, recent_runs, explain_resource. Nodes are resources at `stratum://node/<id>`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from mcp.server.mcpserver import MCPServer

from reconcilers.knowledge.errors import KnowledgeError
from reconcilers.knowledge.search import Filters

if TYPE_CHECKING:
    from reconcilers.knowledge.reconciler import KnowledgeReconciler
    from reconcilers.knowledge.service import KnowledgeBase


def _node_dict(kb: KnowledgeBase, ref: str) -> dict[str, Any]:
    import json

    node = kb.node(ref)
    g = kb.graph()
    return {**node.summary(), "front_matter": json.loads(node.front), "body": node.body,
            "links": [{"rel": e.rel, "target": e.target, "resolved": e.resolved, "line": e.line}
                      for e in g.out.get(node.id, [])],
            "backlinks": [{"rel": e.rel, "source": e.source} for e in g.into.get(node.id, [])],
            "uri": f"stratum://node/{node.id}"}


def _markdown(kb: KnowledgeBase, ref: str) -> str:
    import json

    from reconcilers.knowledge.execution import render

    node = kb.node(ref)
    return render(json.loads(node.front), node.body)


def build_server(get_kb: Callable[[], KnowledgeBase]) -> MCPServer[Any]:
    """An MCPServer whose tools query the KnowledgeBase `get_kb()` returns (refreshed on each call)."""
    server: MCPServer[Any] = MCPServer(
        "stratum-knowledge",
        instructions="Operational knowledge of this ops repo: runbooks, ADRs, postmortems, guidelines and the "
                     "daemon's run history. Search first; cite nodes by their stratum://node/<id> URI.")

    @server.tool()
    def search(query: str, type: str | None = None, project: str | None = None, semantic: bool = True,
               threshold: float = 0.4, limit: int = 10, tags: list[str] | None = None,
               status: str | None = None) -> dict[str, Any]:
        """Hybrid search (BM25 + embeddings, fused by rank). `semantic=false` is keyword-only; `threshold` is
        the minimum cosine similarity for a semantic match."""
        filters = Filters(types=(type,) if type else (), tags=tuple(tags or ()), status=(status,) if status else (),
                          project=project or "")
        result = get_kb().search(query, mode="hybrid" if semantic else "lexical", limit=max(1, min(limit, 100)),
                                 filters=filters, threshold=threshold)
        return {"mode": result.mode, "warning": result.warning, "results": [h.as_dict() for h in result.hits]}

    @server.tool()
    def get_node(id: str) -> dict[str, Any]:
        """One node by id (or title / file stem): front matter, body, links and backlinks."""
        return _node_dict(get_kb(), id)

    @server.tool()
    def list_nodes(type: str | None = None, tags: list[str] | None = None, status: str | None = None,
                   project: str | None = None, limit: int = 100) -> dict[str, Any]:
        """Nodes filtered by type, tags (all must match), status and project."""
        filters = Filters(types=(type,) if type else (), tags=tuple(tags or ()), status=(status,) if status else (),
                          project=project or "")
        nodes = get_kb().nodes(filters)
        return {"total": len(nodes), "nodes": [n.summary() for n in nodes[: max(1, limit)]]}

    @server.tool()
    def get_guidelines() -> dict[str, Any]:
        """The effective guidelines (project overrides organisation bases) and where each came from."""
        found, warnings = get_kb().guidelines()
        return {"guidelines": [g.as_dict() for g in found], "warnings": warnings}

    @server.tool()
    def related(id: str, depth: int = 1) -> dict[str, Any]:
        """The graph neighbourhood of a node up to `depth` hops (1-5), both directions."""
        return get_kb().related(id, depth)

    @server.tool()
    def add_note(title: str, body: str, tags: list[str] | None = None,
                 relates_to: list[str] | None = None) -> dict[str, Any]:
        """Write a new note into knowledge/notes/ (committed only when knowledge.commit_notes is set)."""
        kb = get_kb()
        path, node_id = kb.new_node("note", title, body=body, tags=tags or (),
                                    fields={"relates_to": list(relates_to or [])})
        return {"id": node_id, "path": str(path), "committed": kb.settings.commit_notes}

    @server.tool()
    def record_decision(title: str, context: str, decision: str, consequences: str = "",
                        status: str = "proposed", supersedes: list[str] | None = None,
                        tags: list[str] | None = None) -> dict[str, Any]:
        """Record an architecture decision (ADR) in knowledge/decisions/."""
        kb = get_kb()
        body = f"# {title}\n\n## Context\n\n{context}\n\n## Decision\n\n{decision}\n"
        if consequences:
            body += f"\n## Consequences\n\n{consequences}\n"
        path, node_id = kb.new_node("decision", title, body=body, tags=tags or (), fields={
            "status": status, "context": context[:4000], "decision": decision[:4000],
            "consequences": consequences[:4000], "supersedes": list(supersedes or [])})
        return {"id": node_id, "path": str(path), "committed": kb.settings.commit_notes}

    @server.tool()
    def export(type: str | None = None, ids: list[str] | None = None, tags: list[str] | None = None) -> str:
        """A markdown bundle of nodes (by ids, or filtered by type/tags), each with its front matter."""
        kb = get_kb()
        nodes = [kb.node(i) for i in ids] if ids else kb.nodes(
            Filters(types=(type,) if type else (), tags=tuple(tags or ())))
        parts = [f"<!-- {n.path} -->\n{_markdown(kb, n.id)}" for n in nodes]
        return "\n\n".join(parts) if parts else "(no nodes matched)"

    @server.tool()
    def runbook_for(resource: str | None = None, error: str | None = None, limit: int = 5) -> dict[str, Any]:
        """Runbooks and postmortems for a resource id (e.g. infra:app-config) and/or an error message."""
        if not resource and not error:
            raise KnowledgeError("give a resource id or an error message", hint="e.g. resource='infra:app-config'")
        kb = get_kb()
        found: dict[str, dict[str, Any]] = {}
        if resource:
            target = resource if ":" in resource else f"infra:{resource}"
            for n in kb.linking(target):
                if {"runbook", "postmortem"} & set(n.tags):
                    found[n.id] = {**n.summary(), "why": f"links to {target}"}
        query = " ".join(x for x in (error, resource) if x)
        for tag in ("runbook", "postmortem"):
            result = kb.search(query, limit=limit, filters=Filters(tags=(tag,)), threshold=0.3)
            for h in result.hits:
                found.setdefault(h.node["id"], {**h.node, "why": f"matches {query!r}", "snippet": h.snippet})
        return {"results": list(found.values())[: max(limit, 1) * 2]}

    @server.tool()
    def recent_runs(limit: int = 10) -> dict[str, Any]:
        """What the daemon applied lately: runs with revision, outcome, timings and actions."""
        kb = get_kb()
        runs = kb.recent_runs(max(1, min(limit, 100)))
        executions = [n.summary() for n in kb.nodes(Filters(types=("execution",)))][-limit:]
        return {"runs": runs, "execution_nodes": executions}

    @server.tool()
    def explain_resource(resource: str) -> dict[str, Any]:
        """A resource's governing decisions (ADRs), runbooks, other linking nodes and its last changes."""
        kb = get_kb()
        target = resource if ":" in resource else f"infra:{resource}"
        linking = kb.linking(target)
        name = target.partition(":")[2]
        changes = kb.index.query_dicts(
            "SELECT a.run_id, r.revision, a.kind, a.summary, a.status, a.finished FROM actions a "
            "JOIN runs r ON r.id = a.run_id WHERE a.target = ? OR a.action_id = ? ORDER BY a.finished DESC LIMIT 10",
            [name, target])
        return {"resource": target,
                "decisions": [n.summary() for n in linking if n.type == "decision"],
                "runbooks": [n.summary() for n in linking if {"runbook", "postmortem"} & set(n.tags)],
                "other": [n.summary() for n in linking if n.type != "decision"
                          and not {"runbook", "postmortem"} & set(n.tags)],
                "recent_changes": changes}

    @server.resource("stratum://node/{node_id}", mime_type="text/markdown")
    def node_resource(node_id: str) -> str:
        """A knowledge node as markdown with its front matter."""
        return _markdown(get_kb(), node_id)

    @server.prompt()
    def postmortem(incident: str, resource: str = "") -> str:
        """A blameless postmortem template, pre-linked to the affected resource."""
        link = f"\n\nAffected resource: [[{resource if ':' in resource else 'infra:' + resource}]]" if resource else ""
        return (f"Write a blameless postmortem for: {incident}.{link}\n\nUse `stratum kb new journal` front matter "
                "with tags [postmortem], then sections: Summary, Impact, Timeline (UTC), Root cause, What went "
                "well, What went wrong, Action items (owner, due date). Search the knowledge base for related "
                "runbooks and link them with [[explains::<runbook id>]].")

    @server.prompt()
    def adr(title: str, context: str = "") -> str:
        """An architecture decision record template (status proposed)."""
        return (f"Draft an ADR titled {title!r}. Context so far: {context or '(none)'}.\n\nFill front matter "
                "type: decision, status: proposed, context, decision, consequences; link the resources it "
                "governs ([[infra:<id>]]) and any decision it supersedes (supersedes: [<id>]). Check "
                "get_guidelines first and cite the guidelines it follows.")

    return server


def serve_stdio(kb: KnowledgeBase) -> None:
    """Serve over stdin/stdout until the client disconnects."""
    kb.refresh()
    build_server(lambda: kb).run("stdio")


class _LazyLifespanApp:
    """The streamable HTTP app, starting its session manager with the first request.

    The daemon mounts this under /mcp on its own Starlette app; mounted apps never see lifespan events, so the
    session manager is started on demand in the server's event loop and stopped on the parent's shutdown
    (`aclose`) or with the process.
    """

    def __init__(self, server: MCPServer[Any]) -> None:
        self.server = server
        self.app = server.streamable_http_app(streamable_http_path="/", stateless_http=True, json_response=True)
        self._stack: contextlib.AsyncExitStack | None = None

    async def _ensure(self) -> None:
        if self._stack is None:
            stack = contextlib.AsyncExitStack()
            await stack.enter_async_context(self.server.session_manager.run())
            self._stack = stack

    async def aclose(self) -> None:
        """Stop the session manager."""
        if self._stack is not None:
            await self._stack.aclose()
            self._stack = None

    @contextlib.asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        """For a parent app that forwards its lifespan: start and stop with it."""
        await self._ensure()
        try:
            yield
        finally:
            await self.aclose()

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        await self._ensure()
        if scope["type"] == "http" and scope.get("path", "") in ("", scope.get("root_path", "")):
            scope = {**scope, "path": "/"}
        await self.app(scope, receive, send)


def http_app(reconciler: KnowledgeReconciler) -> _LazyLifespanApp:
    """The MCP HTTP app over the daemon's index (reads what the daemon indexed; never indexes itself)."""
    from reconcilers.knowledge.service import KnowledgeBase

    holder: dict[str, KnowledgeBase] = {}

    def get_kb() -> KnowledgeBase:
        if "kb" not in holder:
            index, repo = reconciler.last_index, reconciler.repo
            if index is None or repo is None:
                raise KnowledgeError("the daemon has not indexed any revision yet", hint="retry after the first run")
            holder["kb"] = KnowledgeBase(repo.path, reconciler.env.data_dir, settings=reconciler.indexed_settings,
                                         provider=reconciler.provider(), index=index, follow_index=True,
                                         host=reconciler.env.settings)
        return holder["kb"]

    return _LazyLifespanApp(build_server(get_kb))
