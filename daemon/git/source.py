"""Git access through pygit2: open a local repo or mirror a remote, resolve refs, and read commits.

Everything Stratum loads comes from a `Snapshot` of one commit's tree; the work tree is never read, so
uncommitted edits cannot leak into a run. Blob ids make caching exact.
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import pygit2

from daemon.control.signing import SigningPolicy, Verification, verify_commit
from daemon.errors import InputError, SourceError
from reconcilers.locations import MAX_FILES as MAX_FILES  # re-exported: the contract's location helpers
from reconcilers.locations import is_url as is_url
from reconcilers.locations import safe_relpath as safe_relpath
from reconcilers.locations import sanitize_url as sanitize_url
from reconcilers.records import FileEntry as FileEntry  # re-exported: the contract's record of a file

MAX_FILE_BYTES = 4 * 1024 * 1024
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
NOTES_REF = "refs/notes/stratum"

_MODE_LINK = int(pygit2.enums.FileMode.LINK)
_MODE_TREE = int(pygit2.enums.FileMode.TREE)
_MODE_COMMIT = int(pygit2.enums.FileMode.COMMIT)


def display_path(path: str) -> str:
    """`path` safe to show, log and store: bytes that are not UTF-8 (surrogates, as pygit2 decodes them) become
    `\\xNN` and control characters `\\xNN`. Valid names are returned unchanged."""
    if path.isascii() and path.isprintable():
        return path
    try:
        text = path.encode("utf-8").decode("utf-8")
    except UnicodeEncodeError:
        text = path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


@dataclass(frozen=True, slots=True)
class TreeScan:
    """What `Snapshot.scan` found: how many files (counting stops past the cap) and the names Stratum refuses."""

    files: int
    over_cap: bool
    bad_names: tuple[str, ...]          # shown escaped (display_path)


@dataclass(frozen=True, slots=True)
class CommitInfo:
    """What the index records of a commit."""

    id: str
    parents: tuple[str, ...]
    author: str
    email: str
    time: int
    message: str


_K = TypeVar("_K")
_V = TypeVar("_V")


class _Bounded(Generic[_K, _V]):
    """A dict that empties itself when it holds more than `limit` items (a cache of content-addressed facts:
    anything kept is exact, and forgetting only costs a re-read). Thread-safe through the GIL's atomic dict
    operations; a lost race only computes a value twice."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._data: dict[_K, _V] = {}
        self._weight = 0

    def get(self, key: _K) -> _V | None:
        return self._data.get(key)

    def put(self, key: _K, value: _V) -> None:
        weight = len(value) if isinstance(value, tuple) else 1
        if self._weight + weight > self.limit:
            self._data, self._weight = {}, 0
        self._data[key] = value
        self._weight += weight


# Subtree listings by (tree id, path) and blob sizes by blob id, shared by every snapshot of the process.
_LISTINGS: _Bounded[tuple[bytes, str], tuple[FileEntry, ...]] = _Bounded(2_000_000)
_SIZES: _Bounded[bytes, int] = _Bounded(1_000_000)
_KEEP_FILE_BYTES = 64 * 1024                           # file contents a snapshot keeps once read: small files
_KEEP_BYTES = 16 * 1024 * 1024                         # up to this much in all (the last good snapshot lives on)
_SCANS: _Bounded[tuple[bytes, str], tuple[int, tuple[str, ...]]] = _Bounded(1_000_000)
# What listings and reads cost (tests assert on these).
LISTING_STATS = {"trees_read": 0, "blobs_sized": 0, "trees_scanned": 0, "blobs_read": 0}


class Snapshot:
    """A read-only view of one commit's tree. Paths are repo-relative POSIX strings."""

    def __init__(self, repo: pygit2.Repository, commit: pygit2.Commit | None, tree: pygit2.Tree | None = None,
                 ) -> None:
        self._repo = repo
        self._known: dict[str, FileEntry] = {}       # files listed by `entries`, by path
        self._data: dict[str, bytes] = {}             # file contents read, by blob id (see read_entry)
        self._data_bytes = 0
        if commit is not None:
            self._tree = commit.tree
            self.revision: str = str(commit.id)
            self.info = CommitInfo(
                id=str(commit.id),
                parents=tuple(str(p) for p in commit.parent_ids),
                author=commit.author.name,
                email=commit.author.email,
                time=int(commit.commit_time),
                message=commit.message,
            )
        else:
            assert tree is not None
            self._tree = tree
            self.revision = f"staged:{tree.id}"
            self.info = CommitInfo(id=self.revision, parents=(), author="", email="", time=0, message="")

    @property
    def repo(self) -> pygit2.Repository:
        """The repository the snapshot reads from (for reconcilers that write notes or side branches)."""
        return self._repo

    @property
    def short(self) -> str:
        """The first 12 hex digits of the revision."""
        return self.revision[:12]

    def _subtree(self, prefix: str) -> pygit2.Tree | None:
        tree = self._tree
        if not prefix:
            return tree
        try:
            obj = tree[prefix.strip("/")]
        except KeyError:
            return None
        return obj if isinstance(obj, pygit2.Tree) else None

    def scan(self, max_files: int = MAX_FILES) -> TreeScan:
        """Count the files of the tree (up to `max_files` + 1: the walk is bounded) and find names that are not
        UTF-8 or hold control characters. Only trees are read, never blobs. Folders scanned before (same tree
        id, same place) are counted from the scan cache: a commit that changes one file re-reads its folders."""
        files, bad = 0, list[str]()
        # ("tree", tree, path) is a folder to read; ("done", key, files before, bad before) closes one.
        stack: list[tuple[Any, ...]] = [("tree", self._tree, "")]
        while stack:
            step = stack.pop()
            if step[0] == "done":
                _, key, files_before, bad_before = step
                _SCANS.put(key, (files - files_before, tuple(bad[bad_before:])))
                continue
            _, tree, base = step
            key = (tree.id.raw, base)
            cached = _SCANS.get(key)
            if cached is not None:
                files += cached[0]
                bad.extend(cached[1])
                if files > max_files:
                    return TreeScan(files, True, tuple(bad[:20]))
                continue
            stack.append(("done", key, files, len(bad)))
            LISTING_STATS["trees_scanned"] += 1
            for item in tree:
                name = str(item.name)
                path = f"{base}/{name}" if base else name
                if display_path(name) != name:
                    bad.append(display_path(path))
                mode = int(item.filemode)
                if mode == _MODE_TREE:
                    stack.append(("tree", self._tree_at(item.id), path))
                elif mode != _MODE_COMMIT:
                    files += 1
                    if files > max_files:
                        return TreeScan(files, True, tuple(bad[:20]))
        return TreeScan(files, False, tuple(bad[:20]))

    def entries(self, prefix: str = "", suffixes: tuple[str, ...] = ()) -> list[FileEntry]:
        """Every file under `prefix` (recursively), optionally only those ending in one of `suffixes`."""
        tree = self._subtree(prefix)
        if tree is None:
            return []
        listing = self._listing(tree, prefix.strip("/"))
        out = [e for e in listing if e.path.endswith(suffixes)] if suffixes else list(listing)
        out.sort(key=lambda e: e.path)
        for e in out:
            self._known.setdefault(e.path, e)
        return out

    def _listing(self, tree: pygit2.Tree, base: str) -> tuple[FileEntry, ...]:
        """The files under `tree` (at `base`), from the listing cache when this subtree was listed before: a
        tree id names its whole content, so a commit that changes one file re-reads one folder's listing."""
        key = (tree.id.raw, base)
        cached = _LISTINGS.get(key)
        if cached is not None:
            return cached
        LISTING_STATS["trees_read"] += 1
        out: list[FileEntry] = []
        for item in tree:
            name = display_path(str(item.name))      # never a surrogate: such a revision is refused anyway
            path = f"{base}/{name}" if base else name
            mode = int(item.filemode)
            if mode == _MODE_TREE:
                out.extend(self._listing(self._tree_at(item.id), path))
            elif mode != _MODE_COMMIT:                # submodules are not part of the snapshot
                out.append(FileEntry(path=path, blob_id=str(item.id), size=self._size(item.id, name.endswith(".ncl")),
                                     mode=mode))
        listing = tuple(out)
        _LISTINGS.put(key, listing)
        return listing

    def _size(self, oid: pygit2.Oid, keep: bool = False) -> int:
        """A blob's size, cached by blob id (reading it inflates a loose object). `keep`: a file that loading
        reads anyway (a Nickel file): its bytes are kept as `read_entry` keeps them, so it is inflated once, not
        twice (20,000 loose infra files: 20,000 object lookups fewer)."""
        key = oid.raw
        size = _SIZES.get(key)
        if size is None:
            blob = self._blob_at(oid)
            size = blob.size
            LISTING_STATS["blobs_sized"] += 1
            _SIZES.put(key, size)
            if keep and size <= _KEEP_FILE_BYTES and self._data_bytes + size <= _KEEP_BYTES:
                self._data[str(oid)] = blob.data
                self._data_bytes += size
        return size

    def _tree_at(self, oid: pygit2.Oid) -> pygit2.Tree:
        obj = self._repo[oid]
        assert isinstance(obj, pygit2.Tree)
        return obj

    def _blob_at(self, oid: pygit2.Oid) -> pygit2.Blob:
        obj = self._repo[oid]
        assert isinstance(obj, pygit2.Blob)
        return obj

    def entry(self, path: str) -> FileEntry | None:
        """The file at `path`, or None."""
        known = self._known.get(path)
        if known is not None:                         # listed by `entries` (one tree walk, not a lookup each)
            return known
        try:
            item = self._tree[path]
        except KeyError:
            return None
        mode = int(item.filemode)
        if mode in (_MODE_TREE, _MODE_COMMIT):
            return None
        return FileEntry(path=path, blob_id=str(item.id), size=self._size(item.id), mode=mode)

    def read(self, path: str, limit: int = MAX_FILE_BYTES) -> bytes:
        """The bytes of a regular file. Symlinks, missing files and files over `limit` are input errors."""
        entry = self.entry(path)
        if entry is None:
            raise InputError("file not found in the commit", where=path)
        return self.read_entry(entry, limit)

    def read_entry(self, entry: FileEntry, limit: int = MAX_FILE_BYTES) -> bytes:
        """The bytes of a listed file (see `read`)."""
        if entry.is_symlink:
            raise InputError("symlinks are not allowed here", where=entry.path,
                             hint="commit the file itself instead of a link")
        if entry.size > limit:
            raise InputError(f"file is {entry.size} bytes, over the {limit}-byte limit", where=entry.path,
                             hint="split the file or raise the limit in stratumd.toml")
        data = self._data.get(entry.blob_id)
        if data is None:
            LISTING_STATS["blobs_read"] += 1
            data = self._blob_at(pygit2.Oid(hex=entry.blob_id)).data
            # Loading reads a file more than once (import scan, the Nickel work tree, line numbers): keep
            # small files' bytes for the snapshot's life, within a budget.
            if len(data) <= _KEEP_FILE_BYTES and self._data_bytes + len(data) <= _KEEP_BYTES:
                self._data[entry.blob_id] = data
                self._data_bytes += len(data)
        return data

    def text(self, entry: FileEntry, limit: int = MAX_FILE_BYTES) -> str:
        """A file's content as UTF-8 text; binary or non-UTF-8 content is an input error."""
        data = self.read_entry(entry, limit)
        if b"\x00" in data:
            raise InputError("binary file where text was expected", where=entry.path)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as err:
            line = data[: err.start].count(b"\n") + 1
            raise InputError(f"not valid UTF-8 (byte {err.start})", where=f"{entry.path}:{line}",
                             hint="save the file as UTF-8") from err


class GitSource:
    """A local repository (bare or not) or a mirror of a remote one, watched on one branch."""

    def __init__(self, location: str, branch: str, data_dir: Path) -> None:
        self.location = location
        self.branch = branch
        self.remote = is_url(location)
        self._lock = threading.RLock()
        self._diffs: dict[tuple[str, str], tuple[tuple[str, str, str], ...]] = {}   # see changes()
        try:
            if self.remote:
                self.repo = self._open_mirror(location, data_dir / "mirror.git")
            else:
                path = Path(location).expanduser()
                if not path.exists():
                    raise SourceError(f"repository path {path} does not exist", hint="check --repo")
                found = pygit2.discover_repository(str(path))
                if found is None:
                    raise SourceError(f"{path} is not a git repository", hint="run `stratum init` or check --repo")
                self.repo = pygit2.Repository(found)
        except pygit2.GitError as err:
            hint = "check that the path is readable or the URL reachable"
            if "not owned by current user" in str(err):
                hint = (f"git refuses repositories owned by another user: run `git config --system --add "
                        f"safe.directory {location}` (the service cannot read ~/.gitconfig)")
            raise SourceError(f"cannot open repository {sanitize_url(location)}: {sanitize_url(str(err))}",
                              hint=hint) from err

    @property
    def git_dir(self) -> Path:
        """The repository's git directory (what watchdog watches)."""
        return Path(self.repo.path)

    @staticmethod
    def _open_mirror(url: str, path: Path) -> pygit2.Repository:
        if (path / "HEAD").exists():
            return pygit2.Repository(str(path))
        path.parent.mkdir(parents=True, exist_ok=True)
        repo = pygit2.init_repository(str(path), bare=True)
        repo.remotes.create("origin", url, "+refs/heads/*:refs/heads/*")
        return repo

    def staged_snapshot(self) -> Snapshot:
        """A snapshot of what `git commit` would record now: the index of a work tree (pre-commit hooks)."""
        with self._lock:
            if self.repo.is_bare:
                raise SourceError("a bare repository has no staging area", hint="give --rev")
            # `git commit -a` / `git commit PATH` run hooks against a temporary index named by GIT_INDEX_FILE
            # (relative to the work tree top); libgit2 would read .git/index and check the wrong tree.
            index_file = os.environ.get("GIT_INDEX_FILE")
            index = pygit2.Index(os.path.join(self.repo.workdir, index_file)) if index_file else self.repo.index
            tree = self.repo[index.write_tree(self.repo)]
            assert isinstance(tree, pygit2.Tree)
            return Snapshot(self.repo, None, tree)

    def fetch(self) -> None:
        """Fetch every branch from the remote (force: a rewritten history replaces the old one)."""
        if not self.remote:
            return
        with self._lock:
            try:
                self.repo.remotes["origin"].fetch(prune=pygit2.enums.FetchPrune.PRUNE)
            except pygit2.GitError as err:
                # libgit2 quotes the URL, credentials included, in its message: sanitize that too.
                raise SourceError(f"fetch from {sanitize_url(self.location)} failed: {sanitize_url(str(err))}",
                                  hint="the daemon retries at the next interval") from err

    def writing(self) -> threading.RLock:
        """The lock fetches and pushes hold: held around a commit and its push, a fetch (which prunes
        branches the remote lacks) cannot come between them."""
        return self._lock

    def publish(self, branch: str) -> None:
        """Make a branch the daemon committed (a proposal, execution records) visible where people review: for a
        mirrored remote, push it there (the next fetch prunes branches the remote lacks); a local repository
        already holds it."""
        if not self.remote:
            return
        ref = f"refs/heads/{branch}"
        with self._lock:
            try:
                self.repo.remotes["origin"].push([f"+{ref}:{ref}"])
            except pygit2.GitError as err:
                raise SourceError(f"push of {branch} to {sanitize_url(self.location)} failed: "
                                  f"{sanitize_url(str(err))}",
                                  hint="the daemon needs push rights on the repository for branches it writes "
                                       "(MCP proposals, execution records)") from err

    def head(self) -> str | None:
        """The commit id the watched branch points at, or None when the branch does not exist."""
        with self._lock:
            ref = self.repo.references.get(f"refs/heads/{self.branch}")
            if ref is None:
                return None
            return str(ref.peel(pygit2.Commit).id)

    def resolve(self, rev: str) -> str:
        """A commit id for any revision expression (sha, branch, HEAD~2)."""
        with self._lock:
            try:
                obj = self.repo.revparse_single(rev)
                return str(obj.peel(pygit2.Commit).id)
            except (KeyError, ValueError, pygit2.GitError) as err:
                raise SourceError(f"unknown revision {rev!r}", hint="give a commit id or branch name") from err

    def snapshot(self, rev: str) -> Snapshot:
        """A read-only snapshot of the commit `rev` resolves to."""
        with self._lock:
            commit = self.repo[pygit2.Oid(hex=self.resolve(rev))]
            assert isinstance(commit, pygit2.Commit)
            return Snapshot(self.repo, commit)

    def is_ancestor(self, old: str, new: str) -> bool:
        """True when `old` is an ancestor of (or equal to) `new`."""
        with self._lock:
            if old == new:
                return True
            try:
                return bool(self.repo.descendant_of(pygit2.Oid(hex=new), pygit2.Oid(hex=old)))
            except (KeyError, ValueError, pygit2.GitError):
                return False

    def new_commits(self, old: str | None, new: str, limit: int = 1000) -> list[CommitInfo]:
        """Commits reachable from `new` but not from `old`, oldest first (at most `limit`)."""
        with self._lock:
            walker = self.repo.walk(pygit2.Oid(hex=new), pygit2.enums.SortMode.TOPOLOGICAL)
            if old is not None:
                try:
                    walker.hide(pygit2.Oid(hex=old))
                except (KeyError, ValueError, pygit2.GitError):
                    pass  # the old commit is gone (history rewritten): record what is new up to the limit
            out: list[CommitInfo] = []
            for commit in walker:
                out.append(Snapshot(self.repo, commit).info)
                if len(out) >= limit:
                    break
            out.reverse()
            return out

    def verify_signature(self, rev: str, policy: SigningPolicy) -> Verification:
        """Check the signature of the commit `rev` resolves to against the host's trusted signers."""
        with self._lock:
            return verify_commit(self.repo, self.resolve(rev), policy)

    def commit_info(self, rev: str) -> CommitInfo:
        """What the index records of the commit `rev` resolves to."""
        return self.snapshot(rev).info

    def touched_paths(self, rev: str) -> set[str]:
        """Paths the commit itself changed: against its parent, or for a merge against *every* parent (what
        the merge added of its own); a root commit touches all its files."""
        with self._lock:
            commit = self.repo[pygit2.Oid(hex=self.resolve(rev))]
            assert isinstance(commit, pygit2.Commit)
            if not commit.parents:
                return {e.path for e in Snapshot(self.repo, commit).entries()}
            touched: set[str] | None = None
            for parent in commit.parents:
                paths = {p for p, _, _ in self.changes(str(parent.id), str(commit.id))}
                touched = paths if touched is None else touched & paths
            return touched or set()

    def changes(self, old: str, new: str) -> list[tuple[str, str, str]]:
        """(path, blob id, added|modified|deleted) between two commits, from libgit2's tree diff. A run asks for
        the same pair twice (admission, then the index): commits never change, so recent answers are kept."""
        with self._lock:
            try:
                a = self.repo[pygit2.Oid(hex=self.resolve(old))]
                b = self.repo[pygit2.Oid(hex=self.resolve(new))]
            except (SourceError, KeyError, ValueError):
                return []
            assert isinstance(a, pygit2.Commit) and isinstance(b, pygit2.Commit)
            key = (str(a.id), str(b.id))
            if key in self._diffs:
                return list(self._diffs[key])
            out: list[tuple[str, str, str]] = []
            try:
                for patch in self.repo.diff(a.tree, b.tree):
                    delta = patch.delta
                    status = {"A": "added", "D": "deleted"}.get(delta.status_char(), "modified")
                    f = delta.old_file if status == "deleted" else delta.new_file
                    out.append((display_path(str(f.path)), str(f.id), status))
            except (KeyError, pygit2.GitError) as err:
                raise SourceError(f"cannot compare {old[:12]} with {new[:12]}: {err}",
                                  hint="a commit or tree is missing from the repository") from err
            if len(self._diffs) >= 16:
                self._diffs.pop(next(iter(self._diffs)))
            self._diffs[key] = tuple(out)
            return out

    def keep(self, rev: str, ref: str) -> None:
        """Point `ref` at `rev` so garbage collection never drops it (best effort: a courtesy, like notes)."""
        with self._lock:
            try:
                self.repo.references.create(ref, pygit2.Oid(hex=self.resolve(rev)), force=True)
            except (pygit2.GitError, SourceError, ValueError):
                pass

    def add_note(self, rev: str, message: str) -> None:
        """Write (or replace) the Stratum note on a commit under refs/notes/stratum."""
        with self._lock:
            sig = pygit2.Signature("stratumd", "stratumd@localhost")
            try:
                self.repo.create_note(message, sig, sig, self.resolve(rev), NOTES_REF, True)
            except pygit2.GitError:
                pass  # a note is a courtesy record; the index holds the authoritative run record

    def note(self, rev: str) -> str | None:
        """The Stratum note on a commit, if any."""
        with self._lock:
            try:
                return str(self.repo.lookup_note(self.resolve(rev), NOTES_REF).message)
            except (KeyError, pygit2.GitError, SourceError):
                return None
