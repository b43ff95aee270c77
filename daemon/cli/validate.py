"""`stratum validate`: the same checks the daemon runs, on the staged tree or a revision; exit 1 on problems."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import click

from daemon.cli.common import common_options, emit_json, handle_errors, output_option, settings_from
from daemon.nickel import Evaluator
from daemon.resources import nickel_dir
from daemon.runtime import build_reconcilers
from daemon.source import GitSource
from reconcilers.base import Problem


def validate_snapshot(source: GitSource, rev: str | None, data_dir: Path, settings: object) -> list[Problem]:
    """Load and validate `rev` (or the staged tree) through every reconciler."""
    from daemon.index import Index
    from daemon.pipeline import Pipeline

    snap = source.snapshot(rev) if rev else source.staged_snapshot()
    evaluator = Evaluator(data_dir / "nickel-cache", prestart=True)
    reconcilers: dict[str, object] = {}
    try:
        built, unavailable = build_reconcilers(settings, evaluator)  # type: ignore[arg-type]
        reconcilers.update(built)
        with tempfile.TemporaryDirectory() as tmp:
            index = Index(Path(tmp) / "validate.duckdb")
            pipe = Pipeline(source=source, index=index, reconcilers=built, evaluator=evaluator, notes=False)
            problems = list(pipe.load_snapshot(snap).problems)
            index.close()
        problems += [Problem(f"the {n} reconciler is unavailable: {why}", reconciler=n)
                     for n, why in unavailable.items()]
        return problems
    finally:
        for rec in reconcilers.values():
            closer = getattr(rec, "close", None)
            if closer:
                closer()
        evaluator.close()


@click.command("validate")
@common_options
@output_option
@click.option("--rev", default=None, help="validate this revision (default: the staged tree, or HEAD when bare)")
@click.argument("files", nargs=-1)
@handle_errors
def validate(repo: str | None, data_dir: Path | None, config_file: Path | None, branch: str | None,
             root: Path | None, output: str, rev: str | None, files: tuple[str, ...]) -> None:
    """Check the repository: Nickel contracts, references, secrets, knowledge. FILES (from pre-commit) are
    accepted for compatibility; the whole tree is always checked, since files import each other."""
    with tempfile.TemporaryDirectory(prefix="stratum-validate-") as tmp:
        settings = settings_from(repo, data_dir or Path(tmp), config_file, branch, root)
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
