"""`stratum init DIR`: lay down a working example ops repository and make its first commit."""

from __future__ import annotations

import importlib
import shutil
from pathlib import Path

import click
import pygit2

from daemon.cli.common import handle_errors
from daemon.errors import StratumError
from daemon.resources import template_dir

_SKIP = {".stratum-data", "__pycache__", "__init__.py"}


def _signature(repo: pygit2.Repository) -> pygit2.Signature:
    try:
        return repo.default_signature
    except (KeyError, pygit2.GitError):
        return pygit2.Signature("Stratum", "stratum@localhost")


def init_repo(target: Path, name: str | None = None) -> str:
    """Copy the template into `target` (new or empty), git init, first commit; returns the commit id."""
    if target.exists() and any(target.iterdir()):
        raise StratumError(f"{target} exists and is not empty", hint="choose a new directory")
    source = template_dir()
    if not (source / "stratum.ncl").is_file():
        raise StratumError(f"the repository template at {source} is missing or incomplete",
                           hint="reinstall stratumops")
    target.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.rglob("*")):
        rel = path.relative_to(source)
        if any(part in _SKIP for part in rel.parts) or path.suffix == ".pyc":
            continue
        dest = target / rel
        if path.is_dir():
            dest.mkdir(parents=True, exist_ok=True)
        else:
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, dest)
    if name:
        settings = target / "stratum.ncl"
        settings.write_text(settings.read_text().replace('"example-ops"', f'"{name}"'))
    repo = pygit2.init_repository(str(target), bare=False, initial_head="main")
    for module in ("reconcilers.vault.init",):
        try:
            importlib.import_module(module).wire_repo(target)
        except ModuleNotFoundError:
            pass  # that part is not installed: its git wiring is skipped
    repo.index.add_all()
    repo.index.write()
    tree = repo.index.write_tree()
    sig = _signature(repo)
    commit = repo.create_commit("HEAD", sig, sig, "Initial Stratum ops repository\n", tree, [])
    return str(commit)


@click.command("init")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--name", default=None, help="the repository's name in stratum.ncl")
@handle_errors
def init(directory: Path, name: str | None) -> None:
    """Create a new ops repository in DIRECTORY from the example template."""
    commit = init_repo(directory, name)
    click.echo(f"Initialized a Stratum ops repository in {directory} (commit {commit[:12]}).")
    click.echo(f"Next: stratum validate --repo {directory}   then   stratumd --repo {directory}")
