"""The ports a reconciler is handed through `ReconcilerEnv`: each a small Protocol the daemon implements.

A reconciler builds no adapter of its own (no Nickel worker, no git source, no writes into a repository): it
uses what the daemon hands it, so a test passes a real alternative and the daemon stays the one owner of its
processes, its repository and its index. The daemon's implementations live in daemon/run/ports.py.

    Evaluator       evaluate Nickel files of a snapshot with a contract (the daemon's bounded worker)
    Revisions       read other revisions and the staged tree of the watched repository
    EventRecorder   record an event (drift, a retry, a secret resolved) under the reconciler's name
    SecretsPort     resolve a reference to a decrypted value at apply time: audited, never stored
    Scheduler       register timers and wake the daemon's loop
    GitWriter       commit files to a side branch (or a new branch) as the daemon
    HttpMount       an interface served on the daemon's listener, behind its authentication
    VerbHost        what a plugin's CLI verb gets from the kernel (click's ctx.obj): the same ports, opened
                    for the repository the verb's --repo/--data-dir/--config/--branch options name
    Tables          the reconciler's own tables in the daemon's DuckDB index
    Workspace       what a reconciler's CLI verbs and interfaces need outside a run (the repo, the index, host
                    settings), opened by the kernel the way the daemon opens them
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from reconcilers.records import FileEntry

if TYPE_CHECKING:
    import pygit2


class Snapshot(Protocol):
    """One revision's tree, read-only (a commit, or the staged tree: revision "staged:<tree id>"): what `load`
    reads. Every read is bounded (files over the size limit, symlinks where a file is expected, binary text
    raise InputError naming the file)."""

    @property
    def revision(self) -> str:
        """The commit id, or "staged:<tree id>"."""
        ...

    @property
    def repo(self) -> pygit2.Repository:
        """The repository, for readers that walk trees themselves (read-only use)."""
        ...

    def entries(self, prefix: str = "", suffixes: tuple[str, ...] = ()) -> list[FileEntry]:
        """Every file under `prefix`, optionally only those ending in one of `suffixes`, sorted by path."""
        ...

    def entry(self, path: str) -> FileEntry | None:
        """The file at `path`, or None."""
        ...

    def read(self, path: str, limit: int = ...) -> bytes:
        """The bytes of a regular file."""
        ...

    def read_entry(self, entry: FileEntry, limit: int = ...) -> bytes:
        """The bytes of a listed file."""
        ...

    def text(self, entry: FileEntry, limit: int = ...) -> str:
        """A file's content as UTF-8 text."""
        ...


class Evaluator(Protocol):
    """Nickel evaluation, bounded by the daemon (deadline, memory, one worker process)."""

    def evaluate(self, snap: Snapshot, paths: Sequence[str], contract: str | None = None,
                 entries: Sequence[Any] = (), on_value: Callable[[str, str, Any], None] | None = None) -> Any:
        """Decoded values per path (`.values`) and located problems (`.problems`) of the paths that failed.
        `on_value(path, key, value)`: each value a Nickel run produced, told as soon as its run is back (in the
        calling thread), so the caller's work on it overlaps the runs still going."""
        ...

    def run_source(self, src: str, import_paths: Sequence[str]) -> dict[str, str]:
        """A generated expression (no repository file), evaluated in the worker: {"ok": JSON} or {"error": text}."""
        ...

    def close(self) -> None:
        """Stop the worker (only its owner, the daemon, calls this)."""
        ...


class Revisions(Protocol):
    """Read access to the watched repository's revisions and its staged tree."""

    branch: str

    @property
    def git_dir(self) -> Path:
        """The repository's git directory (read-only use: a reader that needs a path, such as MCP search)."""
        ...

    def resolve(self, rev: str) -> str:
        """The commit id of `rev` (a branch, a tag, an id); raises SourceError when it names nothing."""
        ...

    def snapshot(self, rev: str) -> Snapshot:
        """The read-only tree of a commit."""
        ...

    def staged_snapshot(self) -> Snapshot:
        """The tree the index of the work tree would commit (what pre-commit checks)."""
        ...


class EventRecorder(Protocol):
    """Events are recorded under the reconciler's name; never put a secret in `message`."""

    def __call__(self, kind: str, message: str, *, subject: str = "", revision: str = "") -> None:
        """Record one event (only when something changed or a person should know)."""
        ...


@dataclass(frozen=True, slots=True)
class SecretLocation:
    """Where a reference points in one revision, without its value: the manifest holding it, the action that
    loads that manifest (a user of the secret is ordered after it), and a keyed fingerprint of the committed
    version of the value (it changes when the value changes, and tells nothing about it)."""

    reference: str
    manifest: str
    action_id: str
    fingerprint: str


class SecretsPort(Protocol):
    """Resolve a secret reference (`kv/<path>#<key>` or `<manifest path>#<key>`) to its decrypted value, at
    apply time only; before that, `locate` it in a revision and `fingerprint` content without any plaintext.

    Every resolution is audited (who asked, for which reference and purpose; never the value) and nothing is
    cached by the port: the caller uses the value and drops it."""

    def resolve(self, reference: str, *, purpose: str) -> str:
        """The plaintext of `reference`; raises a StratumError naming the reference when it cannot."""
        ...

    def locate(self, snap: Snapshot, reference: str) -> SecretLocation:
        """Where `reference` points in `snap` (nothing decrypted); InputError naming the reference when it names
        no value of the revision or the daemon cannot decrypt that manifest."""
        ...

    def fingerprint(self, data: bytes) -> str:
        """A keyed fingerprint of `data` (HMAC under the daemon's key): safe to store, log and compare."""
        ...


class Timer(Protocol):
    """A registered timer."""

    def cancel(self) -> None:
        """Stop it if it has not fired."""
        ...


class Scheduler(Protocol):
    """Timers on the daemon's clock, and a way to wake its loop (a scheduled task became due)."""

    def call_later(self, delay: float, fn: Callable[[], None], *, name: str = "") -> Timer:
        """Run `fn` once after `delay` seconds, off the run's thread; errors are logged, never raised."""
        ...

    def wake(self, reason: str) -> None:
        """Ask the daemon's loop to look at the branch now."""
        ...

    def rerun(self, reason: str) -> None:
        """Ask the daemon to run again what is in force although no commit came (a certificate is due for
        renewal, the vault was unsealed while an apply waited on it): a run recorded like any other, its
        trigger `rerun:<reason>`. A no-op outside a daemon."""
        ...


class GitWriter(Protocol):
    """Commits as the daemon's identity, to branches under the namespace it was given (never the watched
    branch: what the daemon applies comes from people, through review)."""

    def commit_file(self, branch: str, path: str, text: str, message: str, base: str | None = None) -> str:
        """Add or replace `path` on `branch` in one commit; a new branch starts at commit `base` (None: with no
        parent). The commit id; raises SourceError for the watched branch or a `base` not in the repository."""
        ...

    def commit_files(self, branch: str, files: Mapping[str, str], message: str, base: str | None = None) -> str:
        """Like `commit_file` for several files at once (one commit holding all of them)."""
        ...


@dataclass(frozen=True, slots=True)
class HttpMount:
    """An ASGI app the daemon mounts at `prefix` on its listener, built on the first request (`factory`), with
    the daemon's bearer tokens and Cedar policy in front."""

    prefix: str
    factory: Callable[[], Any]
    # "host:port": served on a listener of its own, which authenticates by itself (the vault API on 8200 with
    # its own tokens); "" (the default): on the daemon's listener, behind its bearer tokens.
    listen: str = ""


class VerbHost(Protocol):
    """The kernel's side of a plugin's CLI verb: `stratum`'s group puts one in click's `ctx.obj`, so a verb
    living in a reconciler package gets the daemon's ports without importing the daemon."""

    def locate(self, options: Mapping[str, Any]) -> tuple[Path, Mapping[str, Any]]:
        """The data directory and the host settings sections (stratumd.toml) the daemon would use for the
        repository of `options`, opening nothing (no repository, no worker)."""
        ...

    def open(self, reconciler: str, options: Mapping[str, Any]) -> AbstractContextManager[Any]:
        """The environment (a reconcilers.base.ReconcilerEnv: not named here, base imports this module) of
        `reconciler` for the repository named by `options` (repo, data_dir, config,
        branch, root: the common options' values, None for defaults): the evaluator, the revisions of the
        watched repository and the git writer. Closed (workers stopped) when the block ends."""
        ...

    def plan_markdown(self, options: Mapping[str, Any], base: str, head: str) -> str:
        """The kernel's pull-request plan (`stratum plan --base --head --format markdown`) of `head` against
        `base` in the repository of `options`."""
        ...

    def workspace(self, options: Mapping[str, Any]) -> AbstractContextManager[Workspace]:
        """The repository and the index of `options` opened as the daemon opens them (a Workspace; while a
        daemon holds the index, a private index beside it and `daemon_runs` to ask the daemon). Closed at the
        end of the block."""
        ...
class Tables(Protocol):
    """A reconciler's own tables in the daemon's DuckDB index. The index has one writer and one lock: every call
    here runs under it, and `transaction()` / `connection()` hold it for a block (keep those blocks short)."""

    def migrate(self, component: str, migrations: Sequence[str]) -> int:
        """Apply the not-yet-applied migrations of `component` (its own numbered list); the version reached."""
        ...

    def transaction(self) -> AbstractContextManager[Any]:
        """One DuckDB transaction (re-entrant); yields the connection for bulk statements inside it."""
        ...

    def connection(self) -> AbstractContextManager[Any]:
        """The raw connection under the index's lock, for reads the helpers below cannot express (numpy fetch)."""
        ...

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Rows of a query."""
        ...

    def query_dicts(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Rows of a query as dicts."""
        ...

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        """One statement."""
        ...

    def get_state(self, key: str) -> str | None:
        """A value of the index's key/value state table."""
        ...

    def set_state(self, key: str, value: str | None) -> None:
        """Set (None: delete) a state value."""
        ...


class Source(Revisions, Protocol):
    """A repository the kernel opened (local, or a mirror of a remote): revisions plus what a facade outside the
    daemon's loop needs (fetch the remote, the pygit2 repository for a commit to the work tree)."""

    location: str

    @property
    def repo(self) -> pygit2.Repository:
        """The repository (a mirror for a remote location)."""
        ...

    def fetch(self) -> None:
        """Fetch a remote location's branch (nothing for a local one)."""
        ...


@dataclass(frozen=True, slots=True)
class Workspace:
    """What a reconciler's CLI verbs and interfaces outside a run are handed: the repo and the index opened as
    the daemon opens them, the host's settings, and factories for what they may start. The kernel builds it
    (daemon/cli/workspace.py); a reconciler never opens these itself."""

    source: Source
    index: Tables
    data_dir: Path
    host: Mapping[str, Any]                             # host settings sections (stratumd.toml)
    open_source: Callable[[str, str, Path], Source]     # another repo (location, branch, state dir): a base
    evaluator: Callable[[Path], Evaluator]              # a bounded Nickel evaluator (cache dir); caller closes it
    daemon_runs: Callable[[int], list[dict[str, Any]]] | None = None   # set when a running daemon holds the index
    version: str = ""                                   # Stratum's version, for interfaces that announce it
