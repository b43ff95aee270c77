"""`stratum validate`: the same checks the daemon runs, on the staged tree or a revision; exit 1 on problems."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from daemon.cli.ahead import preloading, workers_ahead
from daemon.cli.common import (
    as_the_daemon_runs,
    common_options,
    emit_json,
    handle_errors,
    output_option,
    settings_from,
)
from daemon.package_data import nickel_dir
from daemon.settings import Settings
from reconcilers.base import AnyReconciler, Problem

if TYPE_CHECKING:
    from daemon.git.source import GitSource


def validate_snapshot(source: GitSource, rev: str | None, data_dir: Path, settings: Settings) -> list[Problem]:
    """Load and validate `rev` (or the staged tree) through every reconciler: steps 1-4 of a run, with no index
    (nothing is recorded; DuckDB is not even imported)."""
    from daemon.nickel.evaluator import Evaluator
    from daemon.run.pipeline import load_snapshot
    from daemon.run.runtime import build_reconcilers

    snap = source.snapshot(rev) if rev else source.staged_snapshot()
    # `data_dir` is the command's temporary directory: values kept on disk there would be deleted unread.
    evaluator = Evaluator(data_dir / "nickel-cache", prestart=True, keep_values=False)
    reconcilers: dict[str, AnyReconciler] = {}
    try:
        built, unavailable = build_reconcilers(settings, evaluator)
        reconcilers.update(built)
        # The load starts by waiting for the Nickel worker: the libraries it imports later load meanwhile.
        with preloading(settings.repo):
            loaded = load_snapshot(snap, built, evaluator, settings.max_files)
        problems = list(loaded.problems)
        if not problems:
            problems += _judged(source, rev, loaded, built)
        problems += [Problem(f"the {n} reconciler is unavailable: {why}", reconciler=n)
                     for n, why in unavailable.items()]
        return problems
    finally:
        for rec in reconcilers.values():
            rec.close()
        evaluator.close()


def _base_revision(source: GitSource, rev: str | None) -> str | None:
    """What the daemon would judge trust against: its last good revision when this repo carries the ref, else
    HEAD for the staged tree, else the revision's first parent."""
    from daemon.errors import SourceError
    from daemon.run.pipeline import LAST_GOOD_REF

    for candidate in (LAST_GOOD_REF, "HEAD" if rev is None else f"{rev}^"):
        try:
            return source.resolve(candidate)
        except SourceError:
            continue
    return None


def _judged(source: GitSource, rev: str | None, loaded: Any, reconcilers: dict[str, AnyReconciler],
            ) -> list[Problem]:
    """Trust checks against the base (admission's judge_against_base): a commit cannot trust its own signer."""
    from daemon.control.admission import judge_against_base
    from daemon.run.pipeline import Loaded

    base_rev = _base_revision(source, rev)
    if base_rev is None or base_rev == loaded.snapshot.revision:
        return []
    judging = {n: r for n, r in reconcilers.items() if r.judges_base}
    base_snap = source.snapshot(base_rev)
    base = Loaded(base_snap, {}, {n: r.load(base_snap) for n, r in judging.items()}, ())
    return judge_against_base(judging, loaded, base)


@click.command("validate")
@common_options
@output_option
@click.option("--rev", default=None, help="validate this revision (default: the staged tree, or HEAD when bare)")
@click.argument("files", nargs=-1)
@handle_errors
def validate(repo: str | None, data_dir: Path | None, config_file: Path | None, branch: str | None,
             root: Path | None, output: str, rev: str | None, files: tuple[str, ...]) -> None:
    """Check the repository: Nickel contracts, references, secrets, knowledge. FILES (from pre-commit) are
    accepted for compatibility; the whole tree is always checked, since files import each other.

    \b
    Examples:
      stratum validate                     the staged tree (what a pre-commit hook checks)
      stratum validate --rev HEAD~1        a committed revision
      stratum validate --output json       problems with file, line and column
    """
    with tempfile.TemporaryDirectory(prefix="stratum-validate-") as tmp:
        settings = settings_from(repo, data_dir or Path(tmp), config_file, branch, root)
        if data_dir is not None:
            # Judge as the daemon on that data directory would: its root, branch and settings file.
            settings = as_the_daemon_runs(settings, root=root, branch=branch, config_file=config_file)
        # Workers the load will need start now, before git, Nickel and the reconcilers are imported here.
        with workers_ahead(settings.repo):
            from daemon.git.source import GitSource

            source = GitSource(settings.repo, settings.branch, settings.data_dir)
            if rev is None and source.repo.is_bare:
                rev = "HEAD"
            problems = validate_snapshot(source, rev, Path(tmp), settings)
    if output == "json":
        emit_json({"ok": not problems, "problems": [p.as_dict() for p in problems], "library": str(nickel_dir())})
    else:
        for p in problems:
            click.echo(str(p), err=True)
        click.echo(f"{len(problems)} problem(s)" if problems else "ok: no problems found")
    sys.exit(1 if problems else 0)
