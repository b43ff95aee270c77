"""`stratum status | log | drift | events`: read models, from the running daemon or the index directly."""

from __future__ import annotations

import datetime as dt
import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from daemon.cli.common import (
    common_options,
    daemon_or_local,
    emit_json,
    handle_errors,
    output_option,
    read_model,
    settings_from,
)
from daemon.cli.errors import quiet_logs
from daemon.cli.text import clip
from daemon.index.read_models import events as events_query
from daemon.index.read_models import runs as runs_query
from daemon.index.read_models import status as status_query
from daemon.service import control_client as api
from daemon.settings import Settings
from reconcilers.registry import REGISTRY

if TYPE_CHECKING:
    from daemon.index.store import Index


def _read(settings: Settings, op: str, key: str, query: Callable[[Index], Any], **fields: Any) -> Any:
    """`key` of the running daemon's answer to `op`, or `query` over the index (read-only, never moved or
    rebuilt by a reader) when no daemon runs."""
    return read_model(settings, lambda sock: api.call(sock, op, **fields)[key], query)


def _unavailable() -> dict[str, str]:
    """Reconcilers whose code cannot be imported here (without a daemon, nothing else is known)."""
    out: dict[str, str] = {}
    for name, target in REGISTRY.items():
        try:
            importlib.import_module(target.partition(":")[0])
        except Exception as err:  # noqa: BLE001 reported as the reconciler's Ready condition
            out[name] = f"{type(err).__name__}: {err}"
    return out


def _when(ts: float | None) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


@click.command("status")
@common_options
@output_option
@handle_errors
def status(repo: str | None, data_dir: Path | None, config_file: Path | None, branch: str | None,
           root: Path | None, output: str) -> None:
    """Where things stand: repository, daemon, applied revision, suspension, Ready per reconciler.

    A suspension shows why, by whom and since when. Long messages are shortened at a word; `--output json`
    has them in full.

    \b
    Examples:
      stratum status
      stratum status --output json | jq .reconcilers.infra.conditions
    """
    settings = settings_from(repo, data_dir, config_file, branch, root)
    data = _read(settings, "status", "status",
                 lambda index: status_query(index, list(REGISTRY), _unavailable(), {"daemon": None}))
    if output == "json":
        emit_json(data)
        return
    daemon_info = data.get("daemon") or {}
    click.echo(f"repository: {data.get('repository') or settings.repo} "
               f"(branch {data.get('branch') or settings.branch})")
    not_ready = f"; NOT READY: {daemon_info['reason']}" if daemon_info.get("ready") is False else ""
    running = f"running (pid {daemon_info['pid']}){not_ready}" if daemon_info else "not running"
    click.echo(f"daemon: {running}")
    click.echo(f"last applied: {data['last_applied_revision'] or '-'}   last attempted: "
               f"{data['last_attempted_revision'] or '-'}")
    if data.get("suspended"):
        sus = data.get("suspension") or {}
        who = f" by {sus['by']}" if sus.get("by") else ""
        since = f" since {_when(sus['at'])} UTC" if sus.get("at") else ""
        click.echo(f"SUSPENDED{who}{since}: {sus.get('reason') or 'no reason given'} (`stratum resume` applies again)")
    for name, rec in data["reconcilers"].items():
        cond = rec["conditions"][0]
        click.echo(f"  {name:<10} Ready={cond['status']:<7} {cond['reason']:<24} {clip(cond['message'], 100)}")


@click.command("log")
@common_options
@output_option
@click.option("--limit", "-n", default=20, show_default=True)
@handle_errors
def log_cmd(repo: str | None, data_dir: Path | None, config_file: Path | None, branch: str | None,
            root: Path | None, output: str, limit: int) -> None:
    """The newest runs with their outcome.

    \b
    Examples:
      stratum log -n 5
      stratum log --output json | jq '.[0].problems'      full messages and problems
    """
    settings = settings_from(repo, data_dir, config_file, branch, root)
    rows = _read(settings, "log", "runs", lambda index: runs_query(index, limit), limit=limit)
    if output == "json":
        emit_json(rows)
        return
    for r in rows:
        ms = f"{r['duration_ms']:.0f} ms" if r["duration_ms"] is not None else "-"
        click.echo(f"{_when(r['started'])}  {r['revision'][:12]}  {r['status']:<11} {ms:>9}  {r['trigger']:<8} "
                   f"{clip(r['message'], 80)}")


@click.command("events")
@common_options
@output_option
@click.option("--limit", "-n", default=50, show_default=True)
@handle_errors
def events(repo: str | None, data_dir: Path | None, config_file: Path | None, branch: str | None,
           root: Path | None, output: str, limit: int) -> None:
    """Recorded events: drift, rewritten history, missing branch, failed fetches.

    \b
    Examples:
      stratum events -n 20
      stratum events --output json | jq '.[] | select(.kind == "drift")'
    """
    settings = settings_from(repo, data_dir, config_file, branch, root)
    rows = _read(settings, "events", "events", lambda index: events_query(index, limit), limit=limit)
    if output == "json":
        emit_json(rows)
        return
    for e in rows:
        click.echo(f"{_when(e['ts'])}  {e['kind']:<18} {e['subject'] or ''} {clip(e['message'], 100)}")


@click.command("drift")
@common_options
@output_option
@handle_errors
def drift(repo: str | None, data_dir: Path | None, config_file: Path | None, branch: str | None,
          root: Path | None, output: str) -> None:
    """Compare the host with the last applied revision (exit 1 when anything drifted).

    Each drifted resource shows what differs, expected vs found (mode, type, link target, content
    fingerprint), and a unified diff of text content (only fingerprints for files that may carry a secret).
    `--output json` gives both sides per resource.

    \b
    Examples:
      stratum drift
      stratum drift --output json | jq '.[] | {resource, expected, found}'
    """
    from daemon.run.report import detail_lines, drift_to_list

    quiet_logs()
    settings = settings_from(repo, data_dir, config_file, branch, root)

    def local() -> list[dict[str, Any]]:
        from daemon.run.runtime import build

        rt = build(settings)
        try:
            rev = rt.index.get_state("last_applied_revision")
            return drift_to_list(rt.pipeline.plan(rev)) if rev else []
        finally:
            rt.close()

    # Like the readers: never open the index while a daemon is starting (it would wait for us, bounded).
    found = daemon_or_local(settings, lambda sock: api.call(sock, "drift")["drift"], local)
    if output == "json":
        emit_json(found)
    else:
        for p in found:
            click.echo(f"{p['path']}:{p['line']}: {p['message']}")
            for line in detail_lines(p if "expected" in p else None):
                click.echo(f"    {line}")
        click.echo(f"{len(found)} drifted resource(s)" if found else "no drift")
    sys.exit(1 if found else 0)
