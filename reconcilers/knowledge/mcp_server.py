"""The MCP server: knowledge tools, node resources and prompt templates for AI assistants.

`stratum kb mcp` serves it over stdio; the daemon mounts the streamable HTTP transport at /mcp. Tools follow
Kogral's surface (search, get_node, list_nodes, get_guidelines, related, export; add_note and record_decision
only when the host enables `[knowledge] mcp_writes`, and then as commits to a side branch) plus ops tools:
runbook_for, recent_runs, explain_resource. Nodes are resources at `stratum://node/<id>`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError

from reconcilers.errors import StratumError
from reconcilers.knowledge.errors import KnowledgeError
from reconcilers.knowledge.search import Filters

if TYPE_CHECKING:
    import pygit2

    from reconcilers.base import ReconcilerEnv
    from reconcilers.knowledge.contract import Contract
    from reconcilers.knowledge.embed import Provider
    from reconcilers.knowledge.knowledge_base import KnowledgeBase
    from reconcilers.knowledge.settings import KnowledgeSettings


class Served(Protocol):
    """What the MCP app reads of the knowledge reconciler (declared here, so the two do not import each other)."""

    env: ReconcilerEnv
    last_index: Any
    indexed_settings: KnowledgeSettings
    contract: Contract

    @property
    def repo(self) -> pygit2.Repository | None: ...

    def provider(self) -> Provider | None: ...


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


F = TypeVar("F", bound=Callable[..., Any])


def tool(server: MCPServer[Any]) -> Callable[[F], F]:
    """`server.tool()`, with our errors passed to the client as what, where and what to do (the SDK replaces
    any other exception by a bare "Error executing tool")."""
    def register(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except StratumError as err:
                raise ToolError(err.render()) from err

        server.tool()(wrapper)
        return fn
    return register


def principal_of(ctx: Context[Any]) -> str | None:
    """Who is calling, as the daemon's HTTP authentication established it, or the local user over stdio.

    The hook for the listener's authentication: it sets `scope["state"]["principal"]` (a string) on each
    request it lets through to /mcp. Headers (Host included) are client input and never an identity.
    """
    try:
        request = ctx.request_context.request
    except ValueError:
        request = None
    if request is None:                                   # stdio: the user who started `stratum kb mcp`
        import getpass

        return f"local:{getpass.getuser()}"
    scope = getattr(request, "scope", None) or {}
    state = scope.get("state") if isinstance(scope, dict) else None
    found = state.get("principal") if isinstance(state, dict) else None
    return str(found) if found else None


def _writer(get_kb: Callable[[], KnowledgeBase], ctx: Context[Any]) -> tuple[KnowledgeBase, str]:
    principal = principal_of(ctx)
    if principal is None:
        raise KnowledgeError("writing knowledge over HTTP needs an authenticated caller, and this request has none",
                             hint="configure the listener's authentication (bearer tokens) for /mcp")
    return get_kb(), principal


@contextlib.contextmanager
def _own_logging() -> Iterator[None]:
    """Keep the MCP SDK from configuring the process's logging: MCPServer() calls logging.basicConfig with a
    rich handler, which would print rich-formatted lines ("Processing request of type ...") beside the daemon's
    JSON log. Whatever the SDK adds to the root logger is removed; its own loggers report warnings and worse,
    through the root logger the daemon set up (none: then Python's last-resort handler, plain text)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        for handler in root.handlers[:]:
            if handler not in handlers:
                root.removeHandler(handler)
        root.setLevel(level)
        logging.getLogger("mcp").setLevel(logging.WARNING)


def build_server(get_kb: Callable[[], KnowledgeBase], *, writes: bool = False, version: str = "") -> MCPServer[Any]:
    """An MCPServer whose tools query the KnowledgeBase `get_kb()` returns (refreshed on each call).

    The same server, defaults and answers for stdio and HTTP. `writes` (host setting `[knowledge] mcp_writes`,
    default off) adds `add_note` and `record_decision`, which commit to a side branch (never the work tree)."""
    with _own_logging():
        server: MCPServer[Any] = MCPServer(
            "stratum-knowledge", version=version or "0.0.0",
            instructions="Operational knowledge of this ops repo: runbooks, ADRs, postmortems, guidelines and the "
                         "daemon's run history. Search first; cite nodes by their stratum://node/<id> URI.")

    @tool(server)
    def search(query: str, type: str | None = None, project: str | None = None, semantic: bool = True,
               threshold: float | None = None, limit: int = 10, tags: list[str] | None = None,
               status: str | None = None) -> dict[str, Any]:
        """Hybrid search (BM25 + embeddings, fused by rank), as `stratum kb search`. `semantic=false` is
        keyword-only; `threshold` is the minimum cosine similarity for a semantic match (default 0.2). Each
        result's `score` (0-1) is the better of its similarity and its share of the query's words."""
        filters = Filters(types=(type,) if type else (), tags=tuple(tags or ()), status=(status,) if status else (),
                          project=project or "")
        result = get_kb().search(query, mode="hybrid" if semantic else "lexical", limit=max(1, min(limit, 100)),
                                 filters=filters, threshold=threshold)
        return {"mode": result.mode, "warning": result.warning, "results": [h.as_dict() for h in result.hits]}

    @tool(server)
    def get_node(id: str) -> dict[str, Any]:
        """One node by id (or title / file stem): front matter, body, links and backlinks."""
        return _node_dict(get_kb(), id)

    @tool(server)
    def list_nodes(type: str | None = None, tags: list[str] | None = None, status: str | None = None,
                   project: str | None = None, limit: int = 100) -> dict[str, Any]:
        """Nodes filtered by type, tags (all must match), status and project."""
        filters = Filters(types=(type,) if type else (), tags=tuple(tags or ()), status=(status,) if status else (),
                          project=project or "")
        nodes = get_kb().nodes(filters)
        return {"total": len(nodes), "nodes": [n.summary() for n in nodes[: max(1, limit)]]}

    @tool(server)
    def get_guidelines() -> dict[str, Any]:
        """The effective guidelines (project overrides organisation bases) and where each came from."""
        found, warnings = get_kb().guidelines()
        return {"guidelines": [g.as_dict() for g in found], "warnings": warnings}

    @tool(server)
    def related(id: str, depth: int = 1) -> dict[str, Any]:
        """The graph neighbourhood of a node up to `depth` hops (1-5), both directions."""
        return get_kb().related(id, depth)

    if writes:
        _write_tools(server, get_kb)
    from reconcilers.agents.mcp_tools import register as agent_tools  # agent task approvals (issue 13)

    agent_tools(server, tool, lambda: get_kb().data_dir, writes=writes, principal=principal_of)

    @tool(server)
    def export(type: str | None = None, ids: list[str] | None = None, tags: list[str] | None = None) -> str:
        """A markdown bundle of nodes (by ids, or filtered by type/tags), each with its front matter."""
        kb = get_kb()
        nodes = [kb.node(i) for i in ids] if ids else kb.nodes(
            Filters(types=(type,) if type else (), tags=tuple(tags or ())))
        parts = [f"<!-- {n.path} -->\n{_markdown(kb, n.id)}" for n in nodes]
        return "\n\n".join(parts) if parts else "(no nodes matched)"

    @tool(server)
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
            result = kb.search(query, limit=limit, filters=Filters(tags=(tag,)))
            for h in result.hits:
                found.setdefault(h.node["id"], {**h.node, "why": f"matches {query!r}", "snippet": h.snippet})
        return {"results": list(found.values())[: max(limit, 1) * 2]}

    @tool(server)
    def recent_runs(limit: int = 10) -> dict[str, Any]:
        """What the daemon applied lately: runs with revision, outcome, timings and actions."""
        kb = get_kb()
        runs = kb.recent_runs(max(1, min(limit, 100)))
        executions = [n.summary() for n in kb.nodes(Filters(types=("execution",)))][-limit:]
        return {"runs": runs, "execution_nodes": executions}

    @tool(server)
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


def _write_tools(server: MCPServer[Any], get_kb: Callable[[], KnowledgeBase]) -> None:
    @tool(server)
    def add_note(title: str, body: str, ctx: Context[Any], tags: list[str] | None = None,
                 relates_to: list[str] | None = None) -> dict[str, Any]:
        """Propose a new note: committed to a side branch stratum/mcp/<time>-<id> for a human to merge."""
        kb, principal = _writer(get_kb, ctx)
        return kb.submit_node("note", title, principal, body=body, tags=tags or (),
                              fields={"relates_to": list(relates_to or [])})

    @tool(server)
    def record_decision(title: str, context: str, decision: str, ctx: Context[Any], consequences: str = "",
                        status: str = "proposed", supersedes: list[str] | None = None,
                        tags: list[str] | None = None) -> dict[str, Any]:
        """Propose an architecture decision (ADR): committed to a side branch stratum/mcp/<time>-<id>."""
        kb, principal = _writer(get_kb, ctx)
        body = f"# {title}\n\n## Context\n\n{context}\n\n## Decision\n\n{decision}\n"
        if consequences:
            body += f"\n## Consequences\n\n{consequences}\n"
        return kb.submit_node("decision", title, principal, body=body, tags=tags or (), fields={
            "status": status, "context": context[:4000], "decision": decision[:4000],
            "consequences": consequences[:4000], "supersedes": list(supersedes or [])})


def writes_enabled(host: Mapping[str, Any]) -> bool:
    """The host setting `[knowledge] mcp_writes` (default false): whether MCP may propose nodes."""
    section = host.get("knowledge") or {}
    return isinstance(section, Mapping) and section.get("mcp_writes") is True


def serve_stdio(kb: KnowledgeBase) -> None:
    """Serve over stdin/stdout until the client disconnects."""
    kb.refresh()
    build_server(lambda: kb, writes=writes_enabled(kb.host_settings), version=kb.workspace.version).run("stdio")


class _LazyLifespanApp:
    """The streamable HTTP app, starting its session manager with the first request.

    The daemon mounts this under /mcp on its own Starlette app; mounted apps never see lifespan events, so the
    session manager is started on demand in the server's event loop and stopped on the parent's shutdown
    (`aclose`) or with the process.
    """

    def __init__(self, server: MCPServer[Any]) -> None:
        self.server = server
        self.app = server.streamable_http_app(streamable_http_path="/", stateless_http=True, json_response=True)
        self._task: asyncio.Task[None] | None = None
        self._stop: asyncio.Event | None = None
        self._lock: asyncio.Lock | None = None

    async def _ensure(self) -> None:
        """Start the session manager in a task of its own: its task group must be entered and left by one task
        (a request's task would leave it to whichever task closes it, and anyio refuses that at shutdown)."""
        if self._task is not None and not self._task.done():
            return
        self._lock = self._lock or asyncio.Lock()
        async with self._lock:
            if self._task is not None and not self._task.done():
                return
            started, stop = asyncio.Event(), asyncio.Event()

            async def hold() -> None:
                async with self.server.session_manager.run():
                    started.set()
                    await stop.wait()

            task = asyncio.get_running_loop().create_task(hold(), name="mcp-sessions")
            waiter = asyncio.ensure_future(started.wait())
            await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            if task.done():
                task.result()            # it failed to start: the request gets the error
            self._task, self._stop = task, stop

    async def aclose(self) -> None:
        """Stop the session manager (in its own task)."""
        if self._task is not None and self._stop is not None:
            self._stop.set()
            await self._task
            self._task = self._stop = None

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


def http_app(reconciler: Served) -> _LazyLifespanApp:
    """The MCP HTTP app over the daemon's index (reads what the daemon indexed; never indexes itself)."""
    from reconcilers.knowledge.knowledge_base import KnowledgeBase

    holder: dict[str, KnowledgeBase] = {}

    def get_kb() -> KnowledgeBase:
        if "kb" not in holder:
            # After a restart nothing is indexed by this process yet, but the daemon's index holds the last good
            # revision: serve it at once (env.index / env.revisions are the daemon's own).
            env = reconciler.env
            index = reconciler.last_index or env.index
            if index is None or env.workspace is None:
                raise KnowledgeError("the daemon has not indexed any revision yet", hint="retry after the first run")
            holder["kb"] = KnowledgeBase(replace(env.workspace, index=index), settings=reconciler.indexed_settings,
                                         provider=reconciler.provider(), follow_index=True, writer=env.git_writer,
                                         contract=reconciler.contract)   # Nickel in the worker, not the daemon
        return holder["kb"]

    return _LazyLifespanApp(build_server(get_kb, writes=writes_enabled(reconciler.env.settings),
                                         version=reconciler.env.version))
