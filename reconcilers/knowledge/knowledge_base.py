"""KnowledgeBase: the facade the CLI and the MCP server use over one ops repo and one index.

It reads committed content only (a Snapshot of the branch head), indexes it incrementally, and answers
queries. Writing (`new_node`) goes to the work tree; committing it is opt-in (`knowledge.commit_notes`).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from reconcilers.errors import SourceError
from reconcilers.knowledge.contract import Contract
from reconcilers.knowledge.embed import Provider, load_provider
from reconcilers.knowledge.errors import KnowledgeError, NotFoundError
from reconcilers.knowledge.execution import commit_file, iso, render
from reconcilers.knowledge.graph import Graph
from reconcilers.knowledge.guidelines import Guideline, effective
from reconcilers.knowledge.indexer import (
    STATE_PENDING,
    STATE_REVISION,
    STATE_VECTORS,
    Indexed,
    IndexStats,
    embed_revision,
    index_revision,
    state_mark,
)
from reconcilers.knowledge.loader import Checked, Loader, check, git_blob_id
from reconcilers.knowledge.node import DECISION_STATUSES, ROOT, TYPES, Node, parse, slugify
from reconcilers.knowledge.providers import host_providers, resolve
from reconcilers.knowledge.search import Filters, Result, Searcher
from reconcilers.knowledge.settings import KnowledgeSettings, repo_settings
from reconcilers.knowledge.store import EXTRA, Store
from reconcilers.ports import GitWriter, Workspace

TYPE_DIRS = {"note": "notes", "decision": "decisions", "guideline": "guidelines", "pattern": "patterns",
             "journal": "journal", "execution": "executions"}
_AUTO: Any = object()
# A view following the daemon's index sees the daemon's own commits at once (indexer.state_mark); anything else
# writing the index file (another process, while this one let go of it) within this many seconds.
FOLLOW_RECHECK_S = 1.0


class KnowledgeBase:
    """One repo's knowledge, indexed in DuckDB. Thread-safe; `refresh()` picks up new commits.

    The kernel opens the repository and the index (a Workspace: daemon/run/workspace.py), as the daemon does; a
    CLI beside a running daemon gets a private index and reads runs from the daemon (`daemon_runs`)."""

    def __init__(self, workspace: Workspace, *, settings: KnowledgeSettings | None = None,
                 provider: Provider | None = _AUTO, follow_index: bool = False,
                 writer: GitWriter | None = None, contract: Contract | None = None) -> None:
        """`contract`: the daemon passes its reconciler's (checked in the Nickel worker, results shared); the
        CLI's view checks in its own process."""
        self.workspace = workspace
        self.source = workspace.source
        self.location = workspace.source.location
        self.writer = writer                    # the daemon's git writer (MCP); None: commit here (the CLI)
        # follow_index: the daemon owns indexing (only validated revisions); this view reads what it indexed.
        self.follow_index = follow_index
        self.data_dir = workspace.data_dir
        self.index = workspace.index
        self.store = Store(self.index)
        self.loader = Loader()
        self.contract = contract or Contract()
        self._settings = settings
        self._provider_arg = provider
        self._provider: Provider | None = None
        self.provider_error = ""
        self._searcher: Searcher | None = None
        self.revision: str | None = None
        self.checked: Checked | None = None
        self._graph: Graph | None = None
        self._lock = threading.RLock()
        self.last_stats: IndexStats | None = None
        self._indexed: Indexed | None = None
        self._vectors: str | None = None        # the daemon's vectors marker last seen (follow_index)
        self._mark_seen: int | None = None      # follow_index: the state mark when the state was last read
        self._state_read_at = 0.0
        self._pending_checked: str | None = None  # the revision whose vectors are known complete (_embed_pending)

    # -- state ------------------------------------------------------------------------------------------
    @property
    def settings(self) -> KnowledgeSettings:
        """The repo's knowledge settings (from stratum.ncl at the indexed revision, or as given)."""
        if self._settings is None:
            head = self._head()
            evaluator = self.workspace.evaluator(self.data_dir / "nickel-cache")
            try:
                section = repo_settings(self.source.snapshot(head), evaluator).get("knowledge")
            finally:
                evaluator.close()                # its worker process is this call's alone
            self._settings = KnowledgeSettings.from_mapping(section)
        return self._settings

    @property
    def host_settings(self) -> Mapping[str, Any]:
        """The host's settings sections (stratumd.toml)."""
        return self.workspace.host

    @property
    def searcher(self) -> Searcher:
        """The searcher, with the embedding provider loaded on first use."""
        with self._lock:
            if self._searcher is None:
                if self._provider_arg is _AUTO:
                    choice = self.settings.embedding_provider
                    chosen = resolve(choice, host_providers(self.host_settings))
                    if chosen is None:
                        # Never an endpoint the repo names: only the host's declared providers are reachable.
                        raise KnowledgeError(
                            f"knowledge.embedding.provider = {choice!r} is not an embedding provider this host "
                            "declared", where="stratum.ncl",
                            hint="pick fastembed, none or a provider declared in stratumd.toml "
                                 "[embedding.providers.<name>]")
                    self._provider, self.provider_error = load_provider(chosen, self.data_dir)
                else:
                    self._provider = self._provider_arg
                    self.provider_error = "" if self._provider is not None else "embeddings disabled"
                self._searcher = Searcher(self.store, self._provider, self.provider_error)
            return self._searcher

    def close(self) -> None:
        """Stop the embedding worker this view started (a provider handed in is its owner's to stop)."""
        closer = getattr(self._provider, "close", None) if self._provider_arg is _AUTO else None
        if closer is not None:
            closer()

    def _head(self) -> str:
        self.source.fetch()
        try:
            return self.source.resolve(self.source.branch)
        except SourceError as err:
            raise KnowledgeError(f"branch {self.source.branch!r} has no commits yet", where=self.location,
                                 hint="commit something first (`stratum init` makes a first commit)") from err

    def refresh(self, *, force_check: bool = False) -> str:
        """Index the branch head when it moved; returns the revision searched."""
        with self._lock:
            if self.follow_index:
                # The daemon's own commits bump a mark in this process (read before the state, so one landing
                # meanwhile is read next time); DuckDB is asked again when it moved, or after FOLLOW_RECHECK_S.
                mark, now = state_mark(self.index), time.monotonic()
                if (self.revision is not None and mark is not None and mark == self._mark_seen
                        and now - self._state_read_at < FOLLOW_RECHECK_S):
                    return self.revision
                state = dict(self.index.query("SELECT key, value FROM state WHERE key IN (?, ?)",
                                              [STATE_REVISION, STATE_VECTORS]))
                self._mark_seen, self._state_read_at = mark, now
                indexed, vectors = state.get(STATE_REVISION), state.get(STATE_VECTORS)
                if indexed is None:
                    raise KnowledgeError("the daemon has not indexed any revision yet",
                                         hint="wait for the first run to finish")
                if indexed != self.revision:
                    self.revision, self._graph = indexed, None
                    self.searcher.invalidate()
                if vectors != self._vectors:
                    # The daemon embeds after it stored the nodes: pick up the vectors that arrived since.
                    self._vectors = vectors
                    self.searcher.reload()
                return str(indexed)
            head = self._head()
            if head == self.revision and not force_check:
                return head
            searcher = self.searcher
            if not force_check and head in set(self.store.revisions()):
                self.revision, self.checked, self._graph = head, None, None
                return head
            parsed = self.loader.load_snapshot(self.source.snapshot(head))
            extra = self._extra_nodes()
            checked = check(parsed, self.contract, allow_dangling=self.settings.allow_dangling_links, extra=extra,
                            previous=self.checked)
            self.last_stats, self._indexed = index_revision(self.store, checked, head, self._provider, self._indexed)
            searcher.invalidate()
            self.revision, self.checked, self._graph = head, checked, None
            return head

    def _embed_pending(self, revision: str) -> None:
        """Embed what a one-shot `stratum apply` stored without vectors (it marks the index pending and leaves
        the model to the next process that runs it): a search by meaning needs the model anyway."""
        with self._lock:
            # Checked once per revision searched, not per search: a DuckDB query costs 1-15 ms on a loaded host
            # (the whole search is meant to take under 10). Only a one-shot apply marks the index pending, and a
            # revision it stored reaches this view as a new head, checked again then.
            if self._pending_checked == revision:
                return
            provider = self.searcher.provider
            if provider is None:
                return
            if self.index.get_state(STATE_PENDING) is None:
                self._pending_checked = revision
                return
            vectors = embed_revision(self.store, provider, self.store.nodes(revision), (), revision, sweep=True)
            if self.index.get_state(STATE_PENDING) is not None and not vectors.warning:
                self.index.set_state(STATE_PENDING, None)   # every node of the head has its vectors now
                self._pending_checked = revision
            self.searcher.reload()

    def _extra_nodes(self) -> list[Node]:
        return [n for n in self.store.nodes(EXTRA)] if self.store.revisions() else []

    def graph(self) -> Graph:
        """The graph of the indexed revision (execution nodes included)."""
        with self._lock:
            rev = self.refresh()
            if self._graph is None:
                # The graph checked at indexing holds the same nodes (valid ones plus execution nodes) as the
                # store's copy, which takes about a second to read back at 10,000 nodes.
                checked = self.checked
                self._graph = checked.graph if checked is not None else Graph(self.store.nodes(rev))
            return self._graph

    # -- queries ----------------------------------------------------------------------------------------
    def search(self, query: str, *, mode: str = "hybrid", limit: int = 10, filters: Filters | None = None,
               threshold: float | None = None, timings: dict[str, float] | None = None) -> Result:
        """Hybrid (or lexical/vector) search over the head revision (`timings`: see Searcher.search; here
        `refresh` is finding the head and anything to index or embed first)."""
        start = time.perf_counter()
        rev = self.refresh()
        if mode != "lexical" and not self.follow_index:
            self._embed_pending(rev)
        if timings is not None:
            timings["refresh"] = (time.perf_counter() - start) * 1000.0
        return self.searcher.search(rev, query, mode=mode, limit=limit, filters=filters or Filters(),
                                    threshold=threshold, timings=timings)

    def node(self, ref: str) -> Node:
        """A node by id, title, alias or file stem (NotFoundError with a hint otherwise)."""
        found = self.graph().find(ref)
        if found is None:
            raise NotFoundError(f"no knowledge node {ref!r}", where=self.location,
                                hint="`stratum kb list` shows ids; `stratum kb search` finds by content")
        return found

    def nodes(self, filters: Filters | None = None) -> list[Node]:
        """Every node passing `filters`, by path."""
        filters = filters or Filters()
        out = []
        for n in sorted(self.graph().nodes.values(), key=lambda n: n.path):
            meta = {"type": n.type, "tags": list(n.tags), "status": n.status, "project": n.project,
                    "modified": n.modified}
            if filters.accepts(meta):
                out.append(n)
        return out

    def related(self, ref: str, depth: int = 1) -> dict[str, Any]:
        """The neighbourhood of a node: nodes/external ids within `depth` hops and the edges between them."""
        g = self.graph()
        node = self.node(ref)
        ids, edges = g.neighbourhood(node.id, max(1, min(depth, 5)))
        return {"root": node.id,
                "nodes": [g.nodes[i].summary() if i in g.nodes else {"id": i, "type": "external"} for i in ids],
                "edges": [{"source": e.source, "rel": e.rel, "target": e.resolved, "line": e.line} for e in edges]}

    def guidelines(self) -> tuple[list[Guideline], list[str]]:
        """The effective guidelines and warnings about unreadable bases."""
        project = [n for n in self.graph().nodes.values() if n.type == "guideline"]
        return effective(project, self.settings.bases, self.data_dir, self.workspace.open_source, self.loader)

    def linking(self, target: str) -> list[Node]:
        """Nodes with an edge to `target` (a node id or an external id like infra:app-config)."""
        g = self.graph()
        return sorted({g.nodes[e.source].id: g.nodes[e.source] for e in g.edges if e.resolved == target}.values(),
                      key=lambda n: n.path)

    def recent_runs(self, limit: int = 10) -> list[dict[str, Any]]:
        """The daemon's latest runs with outcome and actions (from the core tables).

        When a running daemon holds the index file (`stratum kb mcp` beside a daemon), the runs are asked of
        the daemon over its control socket, so stdio answers as the daemon's /mcp does.
        """
        if self.workspace.daemon_runs is not None:
            return self._daemon_runs(self.workspace.daemon_runs, limit)
        runs = self.index.query_dicts(
            "SELECT id AS run_id, revision, trigger, status, started, finished, duration_ms, message FROM runs "
            "ORDER BY started DESC LIMIT ?", [limit])
        for run in runs:
            run["actions"] = self.index.query_dicts(
                "SELECT action_id, kind, target, summary, status FROM actions WHERE run_id = ? ORDER BY seq",
                [run["run_id"]])
            for key in ("started", "finished"):
                run[key] = iso(run[key]) if run[key] else None
        return runs

    def _daemon_runs(self, ask: Callable[[int], list[dict[str, Any]]], limit: int) -> list[dict[str, Any]]:
        try:
            rows = ask(limit)
        except (OSError, ConnectionError) as err:
            raise KnowledgeError(f"the daemon holds the index but does not answer: {err}", where=str(self.data_dir),
                                 hint="check `stratum status`; runs are read from the daemon") from err
        keys = ("revision", "trigger", "status", "started", "finished", "duration_ms", "message")
        out = []
        for row in rows:
            run = {"run_id": row["id"], **{k: row.get(k) for k in keys}}
            for key in ("started", "finished"):
                run[key] = iso(float(run[key])) if isinstance(run[key], int | float) else run[key]
            run["actions"] = row.get("actions", [])
            out.append(run)
        return out

    # -- writes -----------------------------------------------------------------------------------------
    def submit_node(self, ntype: str, title: str, principal: str, *, body: str = "",
                    fields: dict[str, Any] | None = None, tags: Sequence[str] = ()) -> dict[str, str]:
        """Commit a new node to a side branch `stratum/mcp/<time>-<id>` of the watched repository, made from the
        indexed revision by the daemon's identity with a `Submitted-by: <principal>` trailer; the work tree
        is never touched. A human merges the branch like any other change (review, change control)."""
        node_id = str(uuid.uuid4())
        text = self._node_text(ntype, title, node_id, body, fields, tags)
        rel = f"{ROOT}/{TYPE_DIRS[ntype]}/{slugify(title)}-{node_id[:8]}.md"
        parsed = check((parse(rel, git_blob_id(text.encode()), text),), self.contract, allow_dangling=True)
        if parsed.problems:
            raise KnowledgeError(f"the new node would be invalid: {parsed.problems[0]}", where=rel,
                                 hint="fix the fields you passed")
        base = self.refresh()
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        branch = f"stratum/mcp/{stamp}-{node_id[:8]}"
        who = " ".join(principal.split())[:200]
        message = f"knowledge: add {ntype} {title.strip()}\n\nSubmitted-by: {who}\n"
        if self.writer is not None:
            try:
                commit = self.writer.commit_file(branch, rel, text, message, base=base)
            except SourceError as err:      # e.g. the push of the branch to a watched remote failed
                raise KnowledgeError(f"the proposal was not saved: {err.what}", hint=err.hint) from err
        else:
            commit = commit_file(self.source.repo, branch, rel, text, message, base=base)
        return {"id": node_id, "path": rel, "branch": branch, "commit": commit, "submitted_by": who}

    def _node_text(self, ntype: str, title: str, node_id: str, body: str, fields: dict[str, Any] | None,
                   tags: Sequence[str]) -> str:
        if ntype not in TYPES:
            raise KnowledgeError(f"unknown node type {ntype!r}", hint=f"use one of: {', '.join(TYPES)}")
        if not title.strip() or len(title) > 200:
            raise KnowledgeError("a title must have 1 to 200 characters", hint="give a short, specific title")
        today = iso(time.time())[:10]
        front: dict[str, Any] = {"id": node_id, "type": ntype, "title": title.strip(), "created": today,
                                 "modified": today, "tags": list(tags),
                                 "status": "proposed" if ntype == "decision" else "draft"}
        front.update({k: v for k, v in (fields or {}).items() if v not in (None, "", [])})
        if ntype == "decision" and front["status"] not in DECISION_STATUSES:
            raise KnowledgeError(f"decision status {front['status']!r} is not one of {', '.join(DECISION_STATUSES)}")
        return render(front, body or f"# {title.strip()}\n")

    def new_node(self, ntype: str, title: str, *, body: str = "", fields: dict[str, Any] | None = None,
                 tags: Sequence[str] = (), commit: bool | None = None) -> tuple[Path, str]:
        """Write a new node file into the work tree (committing it when asked or configured); (file, id)."""
        if ntype not in TYPES:
            raise KnowledgeError(f"unknown node type {ntype!r}", hint=f"use one of: {', '.join(TYPES)}")
        if not title.strip() or len(title) > 200:
            raise KnowledgeError("a title must have 1 to 200 characters", hint="give a short, specific title")
        workdir = self.source.repo.workdir
        if workdir is None:
            raise KnowledgeError(f"{self.location} has no work tree", hint="clone the repo and run this there")
        node_id = str(uuid.uuid4())
        today = iso(time.time())[:10]
        front: dict[str, Any] = {"id": node_id, "type": ntype, "title": title.strip(), "created": today,
                                 "modified": today, "tags": list(tags),
                                 "status": "proposed" if ntype == "decision" else "draft"}
        front.update({k: v for k, v in (fields or {}).items() if v not in (None, "", [])})
        if ntype == "decision" and front["status"] not in DECISION_STATUSES:
            raise KnowledgeError(f"decision status {front['status']!r} is not one of {', '.join(DECISION_STATUSES)}")
        rel = f"{ROOT}/{TYPE_DIRS[ntype]}/{slugify(title)}.md"
        path = Path(workdir) / rel
        if path.exists():
            rel = f"{ROOT}/{TYPE_DIRS[ntype]}/{slugify(title)}-{node_id[:8]}.md"
            path = Path(workdir) / rel
        text = render(front, body or f"# {title.strip()}\n")
        parsed = check(self.loader.load_dir(Path(workdir), [_write(path, text)]), self.contract,
                       allow_dangling=True)
        if parsed.problems:
            path.unlink()
            raise KnowledgeError(f"the new node would be invalid: {parsed.problems[0]}", where=rel,
                                 hint="fix the fields you passed")
        if commit if commit is not None else self.settings.commit_notes:
            commit_file(self.source.repo, self.source.branch, rel, text, f"knowledge: add {ntype} {title.strip()}")
            index = self.source.repo.index
            index.read()
            index.add(rel)
            index.write()
        return path, node_id


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path
