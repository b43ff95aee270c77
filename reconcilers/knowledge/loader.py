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

import pygit2

from daemon.git.source import FileEntry, Snapshot
from reconcilers.base import Problem
from reconcilers.errors import InputError
from reconcilers.knowledge.contract import Contract, FrontMatterItem
from reconcilers.knowledge.graph import Graph
from reconcilers.knowledge.node import MAX_NODE_BYTES, NAME, ROOT, Node, Parsed, parse, too_large

_WHERE = re.compile(r"^(.*?):(\d+)$")
_MODE_TREE = int(pygit2.enums.FileMode.TREE)
_MODE_COMMIT = int(pygit2.enums.FileMode.COMMIT)
_TREE_CACHE = 4096                            # subtrees remembered (a revision touches a handful)


def git_blob_id(data: bytes) -> str:
    """The id git gives a blob with this content."""
    return hashlib.sha1(b"blob %d\x00" % len(data) + data, usedforsecurity=False).hexdigest()


@dataclass(frozen=True, slots=True)
class Checked:
    """The nodes fit for the index (valid, first of each id) and every problem, sorted by file and line.

    The other fields let the next revision's `check` reuse this one: the parsed files by path, the problems of
    each file of its own (parse and contract; files without any are absent) and what the graph was built with.
    """

    nodes: tuple[Node, ...]
    problems: tuple[Problem, ...]
    graph: Graph
    parsed: dict[str, Parsed] = dataclasses.field(default_factory=dict)
    own: dict[str, tuple[Problem, ...]] = dataclasses.field(default_factory=dict)
    extra: tuple[Node, ...] = ()
    allow_dangling: bool = False


class Loader:
    """Parses node files with a per-blob cache (bounded)."""

    def __init__(self, cache_size: int = 200_000) -> None:
        self._cache: dict[str, Parsed] = {}
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self.parsed_count = 0                 # files actually parsed (tests check the cache)
        # (tree id, path) -> the .md entries below it: a new commit re-walks only the subtrees it changed.
        self._trees: dict[tuple[str, str], tuple[FileEntry, ...]] = {}
        self._sizes: dict[str, int] = {}

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

    def entries(self, snap: Snapshot, root: str = ROOT) -> list[FileEntry]:
        """`snap.entries(root, (".md",))`, walking only the subtrees this loader has not seen."""
        repo = snap.repo
        rev = snap.revision
        try:
            top = repo[rev[len("staged:"):]] if rev.startswith("staged:") else repo[rev]
            tree = top.peel(pygit2.Tree)
            sub = tree[root] if root else tree
        except (KeyError, ValueError, pygit2.GitError):
            return snap.entries(root, (".md",))       # no such folder (or an unusual snapshot): the plain walk
        if not isinstance(sub, pygit2.Tree):
            return []
        with self._lock:
            if len(self._trees) > _TREE_CACHE:
                self._trees.clear()
                self._sizes.clear()
            found = self._walk(repo, sub, root.strip("/"))
        return sorted(found, key=lambda e: e.path)  # already in git's order, which is path order: ~linear

    def _walk(self, repo: pygit2.Repository, tree: pygit2.Tree, base: str) -> tuple[FileEntry, ...]:
        key = (str(tree.id), base)
        hit = self._trees.get(key)
        if hit is not None:
            return hit
        out: list[FileEntry] = []
        for item in tree:
            name = str(item.name)
            path = f"{base}/{name}" if base else name
            mode = int(item.filemode)
            if mode == _MODE_TREE:
                sub = repo[item.id]
                assert isinstance(sub, pygit2.Tree)
                out.extend(self._walk(repo, sub, path))
            elif mode != _MODE_COMMIT and path.endswith(".md"):   # submodules are not part of a snapshot
                blob_id = str(item.id)
                size = self._sizes.get(blob_id)
                if size is None:
                    blob = repo[item.id]
                    assert isinstance(blob, pygit2.Blob)
                    size = self._sizes[blob_id] = int(blob.size)
                out.append(FileEntry(path=path, blob_id=blob_id, size=size, mode=mode))
        self._trees[key] = found = tuple(out)
        return found

    def load_snapshot(self, snap: Snapshot, root: str = ROOT) -> tuple[Parsed, ...]:
        """Every `root/**/*.md` of a commit, parsed."""
        out: list[Parsed] = []
        entries = self.entries(snap, root)
        with self._lock:
            # One lock and a plain lookup for the common case (same blob, same path): 10,000 files in ~2 ms.
            known = [self._cache.get(e.blob_id) for e in entries]
        for entry, same in zip(entries, known, strict=True):
            if same is not None and same.path == entry.path:
                out.append(same)
                continue
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
          extra: Sequence[Node] = (), previous: Checked | None = None) -> Checked:
    """Apply the contract and the graph rules. `extra` nodes (execution nodes) count as link targets.

    With `previous` (the last revision's result), only the files whose parse differs are checked again and
    the graph is updated rather than rebuilt; the result is the same as checking everything.
    """
    by_path = {p.path: p for p in parsed}
    extra_t = tuple(extra)
    reusable = (previous is not None and previous.allow_dangling == allow_dangling
                and [n.blob_id for n in previous.extra] == [n.blob_id for n in extra_t])
    if previous is None or not reusable:
        changed, gone_paths, own = list(parsed), [], {}
    else:
        old = previous.parsed
        changed = [p for p in parsed if old.get(p.path) is not p]
        gone_paths = [path for path in old if path not in by_path]
        own = dict(previous.own)
    items = [FrontMatterItem(p.path, p.blob_id, p.front, p.key_lines) for p in changed if p.front is not None]
    by_blob = contract.check(items)
    for p in changed:
        mine = list(p.problems)
        if p.front is not None and p.blob_id in by_blob:
            # Contract results are cached per blob; re-anchor them on this path (the same blob may be renamed).
            mine += [Problem(q.message, p.path, q.line, q.col, q.reconciler, q.hint) for q in by_blob[p.blob_id]]
        if mine:
            own[p.path] = tuple(mine)
        else:
            own.pop(p.path, None)
    for path in gone_paths:
        own.pop(path, None)
    new = [p.node for p in changed if p.node is not None and p.path not in own]
    if previous is None or not reusable:
        graph = Graph([*new, *extra_t])
    else:
        def candidate(path: str) -> Node | None:
            p = previous.parsed.get(path)
            return p.node if p is not None and path not in previous.own else None

        gone = [n for n in (candidate(p.path) for p in changed) if n is not None]
        gone += [n for n in (candidate(path) for path in gone_paths) if n is not None]
        graph = previous.graph.updated(gone, new)
    problems = [q for path in sorted(own) for q in own[path]]
    problems.extend(q for q in graph.problems(allow_dangling) if not q.path.startswith("executions/"))
    problems.sort(key=lambda q: (q.path, q.line, q.message))
    extras = {id(n) for n in extra_t}
    if previous is not None and reusable:
        extras = {id(n) for n in previous.extra}
    nodes = tuple(n for n in graph.nodes.values() if id(n) not in extras)
    return Checked(nodes, tuple(problems), graph, by_path, own, extra_t if previous is None or not reusable
                   else previous.extra, allow_dangling)
