"""From a commit (or a work tree, for `stratum kb lint` and the pre-commit hook) to checked nodes.

Parsing is cached by blob id, so a revision that changes one file parses one file. A work-tree file gets the
blob id git would give it (sha1 of `blob <size>\\0<bytes>`), so the caches are shared between both sources.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from daemon.errors import InputError
from daemon.source import Snapshot
from reconcilers.base import Problem
from reconcilers.knowledge.contract import Contract, FrontMatterItem
from reconcilers.knowledge.graph import Graph
from reconcilers.knowledge.node import MAX_NODE_BYTES, NAME, ROOT, Node, Parsed, parse, too_large

_WHERE = re.compile(r"^(.*?):(\d+)$")


def git_blob_id(data: bytes) -> str:
    """The id git gives a blob with this content."""
    return hashlib.sha1(b"blob %d\x00" % len(data) + data, usedforsecurity=False).hexdigest()


@dataclass(frozen=True, slots=True)
class Checked:
    """The nodes fit for the index (valid, first of each id) and every problem, sorted by file and line."""

    nodes: tuple[Node, ...]
    problems: tuple[Problem, ...]
    graph: Graph


class Loader:
    """Parses node files with a per-blob cache (bounded)."""

    def __init__(self, cache_size: int = 200_000) -> None:
        self._cache: dict[str, Parsed] = {}
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self.parsed_count = 0                 # files actually parsed (tests check the cache)

    def _cached(self, path: str, blob_id: str) -> Parsed | None:
        with self._lock:
            hit = self._cache.get(blob_id)
        if hit is None:
            return None
        if hit.path == path:
            return hit
        # Same content at another path (a rename): re-point the parsed node, keep its parse.
        node = hit.node
        if node is not None:
            node = dataclasses.replace(node, path=path)
        problems = tuple(Problem(p.message, path, p.line, p.col, p.reconciler, p.hint) for p in hit.problems)
        return Parsed(path, blob_id, node, hit.front, problems, hit.key_lines)

    def _store(self, parsed: Parsed) -> Parsed:
        with self._lock:
            if len(self._cache) > self._cache_size:
                self._cache.clear()
            self._cache[parsed.blob_id] = parsed
            self.parsed_count += 1
        return parsed

    def load_snapshot(self, snap: Snapshot, root: str = ROOT) -> tuple[Parsed, ...]:
        """Every `root/**/*.md` of a commit, parsed."""
        out: list[Parsed] = []
        for entry in snap.entries(root, (".md",)):
            hit = self._cached(entry.path, entry.blob_id)
            if hit is not None:
                out.append(hit)
                continue
            big = too_large(entry.path, entry.size)
            if big is not None:
                out.append(self._store(Parsed(entry.path, entry.blob_id, None, None, (big,))))
                continue
            try:
                text = snap.text(entry, limit=MAX_NODE_BYTES)
            except InputError as err:
                problem = _from_input(entry.path, err)
                out.append(self._store(Parsed(entry.path, entry.blob_id, None, None, (problem,))))
                continue
            out.append(self._store(parse(entry.path, entry.blob_id, text)))
        return tuple(out)

    def load_dir(self, repo_root: Path, files: Sequence[Path] = (), root: str = ROOT) -> tuple[Parsed, ...]:
        """Node files of a work tree: `files` (paths under `repo_root`) or every `root/**/*.md`."""
        paths = list(files) if files else sorted((repo_root / root).rglob("*.md"))
        out: list[Parsed] = []
        for path in paths:
            rel = path.resolve().relative_to(repo_root.resolve()).as_posix()
            size = path.stat().st_size
            big = too_large(rel, size)
            if big is not None:
                out.append(Parsed(rel, f"size:{size}", None, None, (big,)))
                continue
            data = path.read_bytes()
            blob_id = git_blob_id(data)
            hit = self._cached(rel, blob_id)
            if hit is not None:
                out.append(hit)
                continue
            try:
                if b"\x00" in data:
                    raise InputError("binary file where markdown was expected", where=f"{rel}:1")
                text = data.decode("utf-8")
            except UnicodeDecodeError as err:
                line = data[: err.start].count(b"\n") + 1
                problem = Problem(f"not valid UTF-8 (byte {err.start})", rel, line, reconciler=NAME,
                                  hint="save the file as UTF-8")
                out.append(self._store(Parsed(rel, blob_id, None, None, (problem,))))
                continue
            except InputError as err:
                out.append(self._store(Parsed(rel, blob_id, None, None, (_from_input(rel, err),))))
                continue
            out.append(self._store(parse(rel, blob_id, text)))
        return tuple(out)


def _from_input(path: str, err: InputError) -> Problem:
    m = _WHERE.match(err.where)
    line = int(m.group(2)) if m else 1
    return Problem(err.what, path, line, reconciler=NAME, hint=err.hint)


def check(parsed: Sequence[Parsed], contract: Contract, *, allow_dangling: bool = False,
          extra: Sequence[Node] = ()) -> Checked:
    """Apply the contract and the graph rules. `extra` nodes (execution nodes) count as link targets."""
    items = [FrontMatterItem(p.path, p.blob_id, p.front, p.key_lines) for p in parsed if p.front is not None]
    by_blob = contract.check(items)
    problems: list[Problem] = []
    candidates: list[Node] = []
    for p in parsed:
        own = list(p.problems) + list(by_blob.get(p.blob_id, ()))
        if p.front is not None and p.blob_id in by_blob:
            # Contract results are cached per blob; re-anchor them on this path (the same blob may be renamed).
            own = list(p.problems) + [Problem(q.message, p.path, q.line, q.col, q.reconciler, q.hint)
                                      for q in by_blob[p.blob_id]]
        problems.extend(own)
        if p.node is not None and not own:
            candidates.append(p.node)
    graph = Graph([*candidates, *extra])
    problems.extend(q for q in graph.problems(allow_dangling) if not q.path.startswith("executions/"))
    problems.sort(key=lambda q: (q.path, q.line, q.message))
    ours = {c.blob_id for c in candidates}
    nodes = tuple(n for n in graph.nodes.values() if n.blob_id in ours)
    return Checked(nodes, tuple(problems), graph)
