"""The typed graph over nodes: link resolution, graph-level validation, neighbourhoods, text and dot output.

A link target resolves, in order, to a node id, a `node:<id>`, an external id in another reconciler's
namespace (`infra:app-config`, kept as is), a node alias or title (case-insensitive), or a file stem. Anything
else is a dangling link: an error by default, or a pending edge when `allow_dangling_links` is set.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from reconcilers.base import Problem
from reconcilers.knowledge.node import NAME, NAMESPACES, Node


@dataclass(frozen=True, slots=True)
class Edge:
    """A resolved (or dangling, `resolved == ""`) relation."""

    source: str                               # node id
    rel: str
    target: str                               # as written
    resolved: str                             # a node id, an external "infra:..." id, or "" when dangling
    line: int
    path: str


class Graph:
    """Nodes by id and the edges between them (first file wins on a duplicate id)."""

    def __init__(self, nodes: Iterable[Node]) -> None:
        self.nodes: dict[str, Node] = {}
        self.duplicates: list[tuple[Node, Node]] = []       # (kept, ignored)
        for node in sorted(nodes, key=lambda n: n.path):
            if node.id in self.nodes:
                self.duplicates.append((self.nodes[node.id], node))
            else:
                self.nodes[node.id] = node
        self._names: dict[str, str] = {}
        for node in self.nodes.values():
            aliases = node.field("aliases", [])
            for name in (node.stem, node.title, *(aliases if isinstance(aliases, list) else [])):
                if isinstance(name, str):
                    self._names.setdefault(name.casefold(), node.id)
        self.edges: list[Edge] = [
            Edge(n.id, ln.rel, ln.target, self.resolve(ln.target), ln.line, n.path)
            for n in self.nodes.values() for ln in n.links]
        self.out: dict[str, list[Edge]] = {}
        self.into: dict[str, list[Edge]] = {}
        for e in self.edges:
            self.out.setdefault(e.source, []).append(e)
            if e.resolved:
                self.into.setdefault(e.resolved, []).append(e)

    def resolve(self, target: str) -> str:
        """The node id or external id a link target names, or "" when it names nothing known."""
        if target in self.nodes:
            return target
        prefix, sep, rest = target.partition(":")
        if sep and prefix == "node":
            return rest if rest in self.nodes else ""
        if sep and prefix in NAMESPACES and rest:
            return target
        return self._names.get(target.casefold(), "")

    def find(self, ref: str) -> Node | None:
        """A node by id, title, alias or file stem."""
        nid = self.resolve(ref)
        return self.nodes.get(nid)

    # -- validation ---------------------------------------------------------------------------------
    def problems(self, allow_dangling: bool = False) -> list[Problem]:
        """Duplicate ids, dangling links, supersedes cycles, accepted decisions superseded by drafts."""
        out: list[Problem] = []
        for kept, dup in self.duplicates:
            # Reported on both files: a pre-commit run may check either one.
            for here, there in ((dup, kept), (kept, dup)):
                out.append(Problem(f"duplicate node id {here.id} (also in {there.path})", here.path,
                                   here.line_of("id"), reconciler=NAME,
                                   hint="give one of them a new UUID (`stratum kb new` makes one)"))
        if not allow_dangling:
            for e in self.edges:
                if not e.resolved:
                    out.append(Problem(f"link to nowhere: {e.rel} [[{e.target}]] names no node", e.path, e.line,
                                       reconciler=NAME,
                                       hint="fix the id/title, commit the target node, or prefix an external "
                                            "id with infra:, vault:, task: or agent:"))
        for e in self.edges:
            if e.rel == "supersedes" and e.resolved == e.source:
                out.append(Problem("a node cannot supersede itself", e.path, e.line, reconciler=NAME))
        out.extend(self._supersede_cycles())
        for e in self.edges:
            if e.rel != "supersedes" or e.resolved not in self.nodes or e.resolved == e.source:
                continue
            newer, older = self.nodes[e.source], self.nodes[e.resolved]
            if older.type == "decision" and older.status == "accepted" and newer.status in ("draft", "proposed"):
                out.append(Problem(
                    f"{newer.status} decision {newer.title!r} supersedes the accepted decision {older.title!r}",
                    e.path, e.line, reconciler=NAME,
                    hint=f"accept this decision and mark {older.path} `status: superseded`, "
                         "or drop the supersedes link until it is accepted"))
        return out

    def _supersede_cycles(self) -> list[Problem]:
        succ: dict[str, list[Edge]] = {}
        for e in self.edges:
            if e.rel == "supersedes" and e.resolved in self.nodes and e.resolved != e.source:
                succ.setdefault(e.source, []).append(e)
        state: dict[str, int] = {}
        out: list[Problem] = []
        for start in sorted(succ):
            if state.get(start):
                continue
            # Iterative DFS (a long chain must not hit the recursion limit); 1 = on stack, 2 = done.
            stack: list[tuple[str, int]] = [(start, 0)]
            path: list[str] = []
            while stack:
                nid, i = stack.pop()
                if i == 0:
                    state[nid] = 1
                    path.append(nid)
                edges = succ.get(nid, [])
                if i < len(edges):
                    stack.append((nid, i + 1))
                    nxt = edges[i].resolved
                    if state.get(nxt) == 1:
                        cycle = [*path[path.index(nxt):], nxt]
                        titles = " -> ".join(self.nodes[c].title for c in cycle)
                        out.append(Problem(f"supersedes cycle: {titles}", edges[i].path, edges[i].line,
                                           reconciler=NAME, hint="a decision can only supersede older ones"))
                    elif not state.get(nxt):
                        stack.append((nxt, 0))
                else:
                    state[nid] = 2
                    path.pop()
        return out

    # -- queries -------------------------------------------------------------------------------------
    def neighbourhood(self, node_id: str, depth: int = 1) -> tuple[list[str], list[Edge]]:
        """Ids (nodes and external ids) within `depth` hops in either direction, and the edges between them."""
        seen = {node_id: 0}
        queue = deque([node_id])
        edges: dict[tuple[str, str, str], Edge] = {}
        while queue:
            cur = queue.popleft()
            if seen[cur] >= depth:
                continue
            for e in self.out.get(cur, []) + self.into.get(cur, []):
                other = e.resolved if e.source == cur else e.source
                if not other:
                    continue
                edges[(e.source, e.rel, e.resolved)] = e
                if other not in seen:
                    seen[other] = seen[cur] + 1
                    if other in self.nodes:
                        queue.append(other)
        return list(seen), list(edges.values())

    def label(self, ident: str) -> str:
        """A node's title, or the external id itself."""
        node = self.nodes.get(ident)
        return f"{node.title} [{node.type}]" if node else ident

    def text_tree(self, node_id: str, depth: int = 2) -> str:
        """An indented tree of outgoing and incoming relations (cycles shown once)."""
        lines = [self.label(node_id)]
        visited = {node_id}

        def walk(cur: str, level: int, prefix: str) -> None:
            if level >= depth:
                return
            # dict.fromkeys: the same relation written in front matter and as a wikilink is shown once.
            items = list(dict.fromkeys(
                [(f"{e.rel} ->", e.resolved or f"{e.target} (dangling)") for e in self.out.get(cur, [])]
                + [(f"<- {e.rel}", e.source) for e in self.into.get(cur, [])]))
            for i, (arrow, other) in enumerate(items):
                last = i == len(items) - 1
                lines.append(f"{prefix}{'└── ' if last else '├── '}{arrow} {self.label(other)}")
                if other in self.nodes and other not in visited:
                    visited.add(other)
                    walk(other, level + 1, prefix + ("    " if last else "│   "))

        walk(node_id, 0, "")
        return "\n".join(lines)

    def dot(self, ids: Sequence[str], edges: Sequence[Edge]) -> str:
        """Graphviz dot of a neighbourhood."""
        def q(s: str) -> str:
            return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'

        out = ["digraph knowledge {", "  rankdir=LR;", "  node [shape=box, fontname=\"Helvetica\"];"]
        for ident in ids:
            shape = "" if ident in self.nodes else ", shape=ellipse, style=dashed"
            out.append(f"  {q(ident)} [label={q(self.label(ident))}{shape}];")
        for e in edges:
            out.append(f"  {q(e.source)} -> {q(e.resolved)} [label={q(e.rel)}];")
        out.append("}")
        return "\n".join(out)
