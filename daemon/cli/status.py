"""`stratum status | log | drift | events`: read models, from the running daemon or the index directly."""

from __future__ import annotations

import datetime as dt
import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from daemon import api, log
from daemon.cli.common import (
    common_options,
    daemon_socket,
    emit_json,
    handle_errors,
    output_option,
    settings_from,
)
from daemon.settings import Settings
from daemon.status import events as events_query
from daemon.status import runs as runs_query
from daemon.status import status as status_query
from reconcilers.registry import REGISTRY

if TYPE_CHECKING:
    from daemon.index import Index


def _ask(settings: Settings, op: str, **fields: Any) -> dict[str, Any] | None:
    sock = daemon_socket(settings)
    return api.call(sock, op, **fields) if sock is not None else None


def _read(settings: Settings, op: str, key: str, query: Callable[[Index], Any], **fields: Any) -> Any:
    """`key` of the running daemon's answer to `op`, or `query` over the index when no daemon runs."""
    reply = _ask(settings, op, **fields)
    if reply is not None:
        return reply[key]
    index = _index(settings)
    try:
        return query(index)
    finally:
        index.close()


def _unavailable() -> dict[str, str]:
    """Reconcilers whose code cannot be imported here (without a daemon, nothing else is known)."""
    out: dict[str, str] = {}
    for name, target in REGISTRY.items():
        try:
            importlib.import_module(target.partition(":")[0])
        except Exception as err:  # noqa: BLE001 reported as the reconciler's Ready condition
            out[name] = f"{type(err).__name__}: {err}"
    return out


def _index(settings: Settings) -> Index:
    from daemon.index import Index  # DuckDB only when no daemon answers

    return Index(settings.index_path)


def _when(ts: float | None) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


@click.command("status")
@common_options
@output_option
@handle_errors
def status(repo: str | None, data_dir: Path | None, config_file: Path | None, branch: str | None,
           root: Path | None, output: str) -> None:
    """Per reconciler: last attempted and applied revisions and the Ready condition."""
    settings = settings_from(repo, data_dir, config_file, branch, root)
    data = _read(settings, "status", "status",
                 lambda index: status_query(index, list(REGISTRY), _unavailable(), {"daemon": None}))
    if output == "json":
        emit_json(data)
        return
    click.echo(f"daemon: {'running (pid ' + str(data['daemon']['pid']) + ')' if data.get('daemon') else 'not running'}")
    click.echo(f"last applied: {data['last_applied_revision'] or '-'}   last attempted: "
               f"{data['last_attempted_revision'] or '-'}{'   SUSPENDED' if data.get('suspended') else ''}")
    for name, rec in data["reconcilers"].items():
        cond = rec["conditions"][0]
        click.echo(f"  {name:<10} Ready={cond['status']:<7} {cond['reason']:<24} {cond['message'][:100]}")


@click.command("log")
@common_options
@output_option
@click.option("--limit", "-n", default=20, show_default=True)
@handle_errors
def log_cmd(repo: str | None, data_dir: Path | None, config_file: Path | None, branch: str | None,
            root: Path | None, output: str, limit: int) -> None:
    """The newest runs with their outcome."""
    settings = settings_from(repo, data_dir, config_file, branch, root)
    rows = _read(settings, "log", "runs", lambda index: runs_query(index, limit), limit=limit)
    if output == "json":
        emit_json(rows)
        return
    for r in rows:
        ms = f"{r['duration_ms']:.0f} ms" if r["duration_ms"] is not None else "-"
        click.echo(f"{_when(r['started'])}  {r['revision'][:12]}  {r['status']:<11} {ms:>9}  {r['trigger']:<8} "
                   f"{(r['message'] or '')[:80]}")


@click.command("events")
@common_options
@output_option
@click.option("--limit", "-n", default=50, show_default=True)
@handle_errors
def events(repo: str | None, data_dir: Path | None, config_file: Path | None, branch: str | None,
           root: Path | None, output: str, limit: int) -> None:
    """Recorded events: drift, rewritten history, missing branch, failed fetches."""
    settings = settings_from(repo, data_dir, config_file, branch, root)
    rows = _read(settings, "events", "events", lambda index: events_query(index, limit), limit=limit)
    if output == "json":
        emit_json(rows)
        return
    for e in rows:
        click.echo(f"{_when(e['ts'])}  {e['kind']:<18} {e['subject'] or ''} {e['message'][:100]}")


@click.command("drift")
@common_options
@output_option
@handle_errors
def drift(repo: str | None, data_dir: Path | None, config_file: Path | None, branch: str | None,
          root: Path | None, output: str) -> None:
    """Compare the host with the last applied revision (exit 1 when anything drifted)."""
    log.configure("console", sys.stderr)
    settings = settings_from(repo, data_dir, config_file, branch, root)
    reply = _ask(settings, "drift")
    if reply is not None:
        found = reply["drift"]
    else:
        from daemon.runtime import build

        rt = build(settings)
        try:
            rev = rt.index.get_state("last_applied_revision")
            found = [p.as_dict() for p in rt.pipeline.plan(rev).drift] if rev else []
        finally:
            rt.close()
    if output == "json":
        emit_json(found)
    else:
        for p in found:
            click.echo(f"{p['path']}:{p['line']}: {p['message']}")
        click.echo(f"{len(found)} drifted resource(s)" if found else "no drift")
    sys.exit(1 if found else 0)
