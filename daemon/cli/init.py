"""`stratum init DIR`: lay down a working example ops repository and make its first commit."""

from __future__ import annotations

import importlib
import os
import re
import shutil
from pathlib import Path

import click
import pygit2

from daemon.cli.common import handle_errors
from daemon.errors import StratumError
from daemon.package_data import template_dir

_SKIP = {".stratum-data", "__pycache__", "__init__.py"}
_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")   # a directory name usable as the repo's name


FALLBACK_NAME, FALLBACK_EMAIL = "Stratum user", "stratum@localhost"


def _signature(repo: pygit2.Repository) -> tuple[pygit2.Signature, bool]:
    """The user's git identity, or a repo-local fallback written into the new repository's config (so the
    user's next `git commit` there works too); the flag says whether the fallback was set."""
    try:
        return repo.default_signature, False
    except (KeyError, pygit2.GitError):
        # libgit2 reads only the config; git itself also takes the identity from the environment.
        name, email = os.environ.get("GIT_AUTHOR_NAME"), os.environ.get("GIT_AUTHOR_EMAIL")
        if name and email:
            return pygit2.Signature(name, email), False
        repo.config["user.name"] = FALLBACK_NAME
        repo.config["user.email"] = FALLBACK_EMAIL
        return pygit2.Signature(FALLBACK_NAME, FALLBACK_EMAIL), True


def init_repo(target: Path, name: str | None = None) -> tuple[str, bool]:
    """Copy the template into `target` (new or empty), git init, first commit; returns the commit id and
    whether a repo-local git identity had to be set (none was configured)."""
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
    # Without --name the directory names the repository: two repos made within one second would otherwise get
    # byte-identical first commits (same template, same time), hence one commit id for two repositories. Only
    # a plain name is used (no quoting needed in Nickel); anything else keeps the template's.
    name = name or (target.name if _PLAIN_NAME.fullmatch(target.name) else None)
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
    sig, local_identity = _signature(repo)
    commit = repo.create_commit("HEAD", sig, sig, "Initial Stratum ops repository\n", tree, [])
    return str(commit), local_identity


@click.command("init")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--name", default=None, help="the repository's name in stratum.ncl")
@handle_errors
def init(directory: Path, name: str | None) -> None:
    """Create a new ops repository in DIRECTORY from the example template."""
    commit, local_identity = init_repo(directory, name)
    click.echo(f"Initialized a Stratum ops repository in {directory} (commit {commit[:12]}).")
    if local_identity:
        click.echo(f"No git identity is configured: commits in {directory} are made as "
                   f"'{FALLBACK_NAME} <{FALLBACK_EMAIL}>' (set yours: git -C {directory} config user.name NAME; "
                   f"git -C {directory} config user.email EMAIL).")
    click.echo(f"Next: stratum validate --repo {directory}   then   stratumd --repo {directory}")
