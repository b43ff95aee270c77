"""`stratum suspend | resume | windows`: hold applying (Flux-style), release it, and show the host's sync windows.

While suspended, the daemon records every commit but applies none; `resume` runs the newest. With a daemon
running these go through its control socket; without one they write the same index state directly, so the next
daemon start honours it.
"""

from __future__ import annotations

import datetime as dt
import getpass
import time
from pathlib import Path
from typing import Any

import click

from daemon.cli.common import common_options, daemon_socket, emit_json, handle_errors, output_option, settings_from
from daemon.control.windows import Window, gate, next_change, windows_from_settings
from daemon.errors import StratumError
from daemon.index.read_models import set_suspended
from daemon.service import control_client as api
from daemon.settings import Settings


def _user() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return ""  # no login name and no passwd entry (a bare container): the event says nothing about who


def _suspension(settings: Settings, on: bool, reason: str) -> dict[str, Any]:
    """The daemon's answer when one runs, else the same change made in the index directly."""
    by = _user()
    sock = daemon_socket(settings)
    if sock is not None:
        reply = api.call(sock, "suspend" if on else "resume", reason=reason, by=by)
        return {k: v for k, v in reply.items() if k != "ok"} | {"daemon": True}
    from daemon.index.store import Index  # DuckDB only when no daemon answers

    index = Index(settings.index_path)
    try:
        return set_suspended(index, on, reason, by, time.time()) | {"daemon": False}
    finally:
        index.close()


def _when(ts: Any) -> str:
    try:
        return dt.datetime.fromtimestamp(float(ts), dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (TypeError, ValueError):
        return "?"


@click.command("suspend")
@common_options
@output_option
@click.option("--reason", default="", help="why (shown by `stratum status` and recorded in the events)")
@handle_errors
def suspend(repo: str | None, data_dir: Path | None, config_file: Path | None, branch: str | None,
            root: Path | None, output: str, reason: str) -> None:
    """Stop applying: new commits are recorded but not applied until `stratum resume`.

    \b
    Examples:
      stratum suspend --reason "release freeze until Monday"
      stratum status                       shows the reason, who and since when
    """
    settings = settings_from(repo, data_dir, config_file, branch, root)
    data = _suspension(settings, True, reason)
    if output == "json":
        emit_json(data)
        return
    if not data.get("changed", True):
        since = f" since {_when(data['at'])}" if data.get("at") else ""
        who = f" by {data['by']}" if data.get("by") else ""
        click.echo(f"already suspended{since}{who}" + (f" (reason: {data['reason']})" if data.get("reason") else ""))
        return
    why = f" (reason: {data['reason'] or reason})" if data.get("reason") or reason else ""
    click.echo(f"suspended: commits are recorded but not applied until `stratum resume`{why}")
    if not data["daemon"]:
        click.echo("no daemon runs here: the next daemon start honours this")


@click.command("resume")
@common_options
@output_option
@handle_errors
def resume(repo: str | None, data_dir: Path | None, config_file: Path | None, branch: str | None,
           root: Path | None, output: str) -> None:
    """Apply again: the newest recorded commit runs (unless a deny window is active).

    \b
    Examples:
      stratum resume
    """
    settings = settings_from(repo, data_dir, config_file, branch, root)
    data = _suspension(settings, False, "")
    if output == "json":
        emit_json(data)
    elif not data.get("changed", True):
        click.echo("not suspended: nothing to resume")
    elif data["daemon"]:
        pending = f" ({str(data['pending'])[:12]})" if data.get("pending") else ""
        click.echo(f"resumed: the daemon applies the newest commit{pending} unless a window blocks it")
    else:
        click.echo("resumed: the next daemon start applies the newest commit")


def _instant(text: str | None) -> dt.datetime:
    if text is None:
        return dt.datetime.now(dt.UTC)
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError as err:
        raise StratumError(f"--at {text!r} is not an ISO 8601 time", hint="e.g. 2026-11-28T12:00:00Z") from err
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def _iso(when: dt.datetime | None) -> str | None:
    return when.isoformat(timespec="seconds") if when else None


def _listing(windows: tuple[Window, ...], now: dt.datetime) -> dict[str, Any]:
    return {"now": _iso(now.astimezone(dt.UTC)), "gate": gate(windows, now).as_dict(),
            "manual": gate(windows, now, manual=True).as_dict(), "next_change": _iso(next_change(windows, now)),
            "windows": [w.as_dict() | {"active_until": _iso(w.active_at(now)), "next_start": _iso(w.next_start(now))}
                        for w in windows]}


@click.command("windows")
@common_options
@output_option
@click.option("--at", "at", default=None, metavar="TIME",
              help="judge at this ISO 8601 time instead of now (no offset: UTC)")
@handle_errors
def windows(repo: str | None, data_dir: Path | None, config_file: Path | None, branch: str | None,
            root: Path | None, output: str, at: str | None) -> None:
    """The host's sync windows ([[windows]] in stratumd.toml) and whether applying is allowed now.

    \b
    Examples:
      stratum windows
      stratum windows --at 2026-12-24T18:00:00Z     would applying be allowed then?
    """
    settings = settings_from(repo, data_dir, config_file, branch, root)
    found = windows_from_settings(settings.sections.get("windows", ()), where=str(settings.config_path or ""))
    data = _listing(found, _instant(at))
    sock = daemon_socket(settings) if at is None else None
    if sock is not None:
        try:
            data["daemon_gate"] = api.call(sock, "windows")["gate"]
        except StratumError:
            pass  # a daemon without the `windows` operation: the settings file is all there is to show
    if output == "json":
        emit_json(data)
        return
    if not found:
        click.echo("no windows: schedules never block applying")
        return
    g, m = data["gate"], data["manual"]
    allowed = "allowed" + (f" ({g['reason']})" if g["reason"] else "")
    click.echo(f"at {data['now']}: applying is {'BLOCKED: ' + g['reason'] if g['blocked'] else allowed}")
    if g["blocked"]:
        click.echo(f"  manual `stratum apply`: {'blocked' if m['blocked'] else 'allowed (' + m['reason'] + ')'}")
    daemon_gate = data.get("daemon_gate")
    if daemon_gate is not None and daemon_gate["blocked"] != g["blocked"]:
        click.echo(f"  the running daemon's settings differ (reload with SIGHUP): "
                   f"{'blocked: ' + daemon_gate['reason'] if daemon_gate['blocked'] else 'allowed'}")
    click.echo(f"  next change: {data['next_change'] or '-'}")
    click.echo(f"  {'KIND':<5} {'NAME':<24} {'SCHEDULE':<16} {'FOR':>6}  {'TIMEZONE':<16} {'MANUAL':<6}  STATE")
    for w, row in zip(found, data["windows"], strict=True):
        state = f"active until {row['active_until']}" if row["active_until"] else f"next {row['next_start'] or '-'}"
        click.echo(f"  {w.kind:<5} {w.label[:24]:<24} {w.schedule:<16} {row['duration']:>6}  {w.timezone:<16} "
                   f"{'manual' if w.manual else '':<6}  {state}")
