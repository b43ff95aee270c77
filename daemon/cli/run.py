"""`stratum plan | apply | rollback REV`: against the running daemon when there is one, else directly."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from daemon.cli.common import common_options, daemon_socket, emit_json, handle_errors, settings_from
from daemon.cli.errors import quiet_logs
from daemon.cli.progress import RunProgress
from daemon.run.report import plan_markdown, plan_text, plan_to_dict, run_to_dict
from daemon.service import control_client as api
from daemon.service.lock import ApplyLock
from daemon.settings import Settings


def _plan(settings: Settings, base: str | None, head: str) -> dict[str, Any]:
    sock = daemon_socket(settings)
    if sock is not None and base is None:
        return dict(api.call(sock, "plan", revision=head)["plan"])
    from daemon.cli.ahead import workers_ahead

    with workers_ahead(settings.repo):        # started before the pipeline is imported (daemon/cli/ahead.py)
        from daemon.run.runtime import build  # the whole pipeline: only when no daemon does the work

        # The index opens on a thread while the revision loads: DuckDB's import then runs while the load waits
        # for the Nickel and template workers (daemon/index/opening.py).
        rt = build(settings, ephemeral=base is not None, prestart=True, background_index=True)
        try:
            report = rt.pipeline.plan_between(base, head) if base else rt.pipeline.plan(head)
            return plan_to_dict(report)
        finally:
            rt.close()


@click.command("plan")
@common_options
@click.option("--base", default=None, help="compare against this revision (a pull request's target)")
@click.option("--head", "--rev", "head", default=None,
              help="the revision to plan (default: the watched branch); --rev as for apply and validate")
@click.option("--format", "fmt", type=click.Choice(["text", "markdown", "json"]), default="text")
@click.option("--output", type=click.Choice(["text", "json"]), default=None, help="alias: --format json")
@click.option("--out", "-o", "out", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="also save the plan to FILE, for `stratum apply FILE`")
@click.option("--detailed-exitcode", is_flag=True, help="exit 0: no changes, 2: changes, 1: error or rejected")
@handle_errors
def plan(repo: str | None, data_dir: Path | None, config_file: Path | None, branch: str | None, root: Path | None,
         base: str | None, head: str | None, fmt: str, output: str | None, out: Path | None,
         detailed_exitcode: bool) -> None:
    """Show what applying a revision would change, with diffs (exit 1 when the revision would be rejected).

    Each changed resource shows expected vs found (type, mode, link target, content fingerprint) and a
    unified diff of text content, bounded; files that may carry a secret (not readable by others, a
    secret-like name, a private key inside) show fingerprints only. With --base, the plan compares two
    revisions as a pull request would (no host is read).

    \b
    Examples:
      stratum plan                                   the watched branch against this host
      stratum plan --detailed-exitcode               0: no changes, 2: changes, 1: error
      stratum plan -o tonight.plan                   save it; `stratum apply tonight.plan` applies exactly it
      stratum plan --base origin/main --head HEAD --format markdown   a pull request's comment
    """
    from daemon.cli import planfile

    if out is not None and base is not None:
        raise click.UsageError("--out saves a plan of the host; a --base plan compares revisions only")
    quiet_logs()
    settings = settings_from(repo, data_dir, config_file, branch, root)
    data = _plan(settings, base, head or settings.branch)
    if output == "json" or fmt == "json":
        emit_json(data)
    elif fmt == "markdown":
        parts = plan_markdown(data)
        click.echo("\n\n---\n\n".join(parts))
    else:
        click.echo(plan_text(data))
    if data["problems"]:
        sys.exit(1)
    if out is not None:
        planfile.write(out, data, str(settings.repo), head or settings.branch)
        click.echo(f"saved the plan to {out}: `stratum apply {out}` applies exactly it", err=True)
    sys.exit(2 if detailed_exitcode and data["actions"] else 0)


def _apply(settings: Settings, revision: str, trigger: str, force: bool = False,
           saved: dict[str, Any] | None = None, where: str = "") -> dict[str, Any]:
    """Apply `revision`; with `saved` (a plan file), only when planning it again gives the same plan."""
    from daemon.cli import planfile

    sock = daemon_socket(settings)
    if sock is not None:
        if saved is not None:
            # Checked just before the request: a commit landing in between is caught by the revision pin.
            planfile.check(saved, dict(api.call(sock, "plan", revision=saved["branch"])["plan"]), where)
        return dict(api.call(sock, "rollback" if trigger == "rollback" else "apply", revision=revision,
                             force=force)["run"])
    from daemon.cli.ahead import workers_ahead

    with workers_ahead(settings.repo):        # started before the pipeline is imported (daemon/cli/ahead.py)
        # Imported here: the pipeline, webhooks and windows cost start-up time; only an apply without a daemon
        # needs them.
        from daemon.control.host_controls import host_controls, refuse_manual
        from daemon.run.runtime import build

        with ApplyLock(settings.data_dir):
            rt = build(settings, prestart=True, one_shot=True)
            try:
                if not force:
                    refuse_manual(rt.index, host_controls(settings).windows)
                for result in rt.pipeline.resolve_interrupted(settings.on_interrupted):
                    click.echo(f"resolved interrupted run {result.run_id}: {result.status}", err=True)
                if saved is not None:  # under the apply lock: nothing else applies between the check and the run
                    planfile.check(saved, plan_to_dict(rt.pipeline.plan(saved["branch"])), where)
                # Steps, then a bar over the actions, on stderr when it is a terminal (nothing is planned twice).
                with RunProgress() as shown:
                    rt.pipeline.on_phase, rt.pipeline.on_action = shown.phase, shown.action
                    result = rt.pipeline.run(revision, trigger=trigger)
                return run_to_dict(result)
            finally:
                rt.close()


def _print_run(run: dict[str, Any], output: str) -> None:
    if output == "json":
        emit_json(run)
    else:
        click.echo(f"{run['status']}: {run['revision'][:12]} run {run['run_id']} in {run['duration_ms']:.0f} ms")
        if run["message"]:
            click.echo(f"  {run['message']}")
        for p in run["problems"]:
            where = p["path"] + (f":{p['line']}" if p["line"] else "") + (f":{p['col']}" if p["col"] else "")
            click.echo(f"  {where}: {p['message']}" if where else f"  {p['message']}")
    sys.exit(0 if run["status"] == "succeeded" else 1)


@click.command("apply")
@common_options
@click.argument("plan_file", required=False, type=click.Path(path_type=Path, dir_okay=False))
@click.option("--rev", default=None, help="revision to apply (default: the watched branch)")
@click.option("--output", "-o", type=click.Choice(["text", "json"]), default="text")
@click.option("--force", is_flag=True, help="apply even while suspended or inside a deny window")
@handle_errors
def apply(repo: str | None, data_dir: Path | None, config_file: Path | None, branch: str | None,
          root: Path | None, plan_file: Path | None, rev: str | None, output: str, force: bool) -> None:
    """Apply a revision now, or exactly the plan saved in PLAN_FILE (through the daemon when one runs).

    A saved plan (`stratum plan -o FILE`) is applied only if the branch still points at the planned
    revision and planning it again gives the same actions from the same observed state; otherwise
    nothing is applied and the command exits 1.

    \b
    Examples:
      stratum apply                        the watched branch, now
      stratum apply --rev 4bc40ba7a031     a given revision (stays until the next commit)
      stratum plan -o p.plan && stratum apply p.plan
    """
    from daemon.cli import planfile

    quiet_logs()
    settings = settings_from(repo, data_dir, config_file, branch, root)
    if plan_file is None:
        _print_run(_apply(settings, rev or settings.branch, "cli", force), output)
        return
    if rev is not None:
        raise click.UsageError("give either a plan file or --rev, not both")
    saved = planfile.read(plan_file)
    _print_run(_apply(settings, saved["revision"], "cli", force, saved, str(plan_file)), output)


@click.command("rollback")
@common_options
@click.argument("revision")
@click.option("--output", "-o", type=click.Choice(["text", "json"]), default="text")
@click.option("--force", is_flag=True, help="roll back even while suspended or inside a deny window")
@handle_errors
def rollback(repo: str | None, data_dir: Path | None, config_file: Path | None, branch: str | None,
             root: Path | None, revision: str, output: str, force: bool) -> None:
    """Apply an earlier REVISION; it stays in force until the next commit on the branch.

    \b
    Examples:
      stratum log                          find the revision to go back to
      stratum rollback 4bc40ba7a031
    """
    quiet_logs()
    settings = settings_from(repo, data_dir, config_file, branch, root)
    _print_run(_apply(settings, revision, "rollback", force), output)
