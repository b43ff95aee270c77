"""Workspaces: the repository and the index opened the way the daemon opens them, handed to a reconciler's CLI
verbs and interfaces outside a run (reconcilers/ports.py `Workspace`), so no reconciler opens them itself."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pygit2

from daemon import __version__
from daemon.errors import LockError, SourceError
from daemon.git.source import GitSource, is_url
from reconcilers.ports import Evaluator, Workspace

if TYPE_CHECKING:
    from daemon.index.store import Index

PRIVATE_INDEX = "knowledge-cli.duckdb"       # a CLI's own index while a running daemon holds index.duckdb


class HostSections(Mapping[str, Any]):
    """The host's settings sections (stratumd.toml under the data directory), read on first use: most verbs
    never look at them, and a malformed file should fail only the verbs that do."""

    def __init__(self, data_dir: Path) -> None:
        self._data_dir = data_dir
        self._sections: Mapping[str, Any] | None = None

    def _load(self) -> Mapping[str, Any]:
        if self._sections is None:
            from daemon.settings import load_settings

            self._sections = load_settings({"data_dir": str(self._data_dir)}).sections
        return self._sections

    def __getitem__(self, key: str) -> Any:
        return self._load()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._load())

    def __len__(self) -> int:
        return len(self._load())


def evaluator(cache_dir: Path) -> Evaluator:
    """A bounded Nickel evaluator (its own worker process; the caller closes it)."""
    from daemon.nickel.evaluator import Evaluator as NickelEvaluator

    return NickelEvaluator(cache_dir)


def workspace(source: GitSource, index: Index, data_dir: Path, host: Mapping[str, Any],
              daemon_runs: Any = None) -> Workspace:
    """A Workspace over what the caller opened (the daemon: its own source and index)."""
    return Workspace(source=source, index=index, data_dir=data_dir, host=host, open_source=GitSource,
                     evaluator=evaluator, daemon_runs=daemon_runs, version=__version__)


def default_branch(repo: str) -> str:
    """The checked-out branch of a local repository ("main" for a URL, an unborn or detached HEAD)."""
    if is_url(repo):
        return "main"
    found = pygit2.discover_repository(str(Path(repo).expanduser()))
    if found is None:
        raise SourceError(f"{repo} is not a git repository", hint="run `stratum init` or pass --repo")
    r = pygit2.Repository(found)
    return "main" if r.head_is_unborn or r.head_is_detached else r.head.shorthand


def default_data_dir(repo: str) -> Path:
    """The daemon's data directory for `repo` ($STRATUM_DATA_DIR, else daemon.settings' default)."""
    env = os.environ.get("STRATUM_DATA_DIR")
    if env:
        return Path(env)
    from daemon.settings import default_data_dir as daemon_default

    return Path(daemon_default(os.environ, repo))


def open_workspace(repo: str, data_dir: Path | None = None, *, branch: str | None = None,
                   index: Index | None = None, host: Mapping[str, Any] | None = None) -> Workspace:
    """Open `repo` (a path or URL, mirrored under the data directory) and its index for a CLI verb. While a
    running daemon holds the index, a private index is used and runs are asked of the daemon."""
    from daemon.index.store import Index

    data_dir = data_dir or default_data_dir(repo)
    data_dir.mkdir(parents=True, exist_ok=True)
    source = GitSource(repo, branch or default_branch(repo), data_dir)
    daemon_runs = None
    if index is None:
        try:
            index = Index(data_dir / "index.duckdb")
        except LockError:
            # The daemon holds the index: keep a private index for this CLI instead of failing.
            index = Index(data_dir / PRIVATE_INDEX)
            socket = data_dir / "stratumd.sock"

            def daemon_runs(limit: int) -> list[dict[str, Any]]:
                from daemon.service import control_client

                runs: list[dict[str, Any]] = control_client.call(socket, "log", timeout=10.0, limit=limit,
                                                                 actions=True)["runs"]
                return runs
    return workspace(source, index, data_dir, host if host is not None else HostSections(data_dir), daemon_runs)
