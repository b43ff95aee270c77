"""`stratum daemon` (= `stratumd`) and `stratum notify` (what git hooks call)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from daemon.cli.common import common_options, handle_errors, settings_from
from daemon.service import control_client as api
from daemon.settings import Settings


@click.command("daemon")
@common_options
@click.option("--interval", type=float, default=None, help="seconds between fetches of a remote repository")
@click.option("--drift-interval", type=float, default=None, help="seconds between drift checks (0: off)")
@click.option("--on-interrupted", type=click.Choice(["rollback", "resume"]), default=None,
              help="what to do with a run a killed daemon left unfinished")
@click.option("--http-listen", default=None, help="host:port of the metrics listener (default 127.0.0.1:0)")
@click.option("--log-format", type=click.Choice(["auto", "json", "console"]), default=None)
@click.option("--worker", is_flag=True, help="only run task workers of plugins (agent tasks), with no repository")
@click.option("--role", "roles", multiple=True, help="a role the worker serves (--worker; repeatable)")
@click.option("--queue-url", default=None, help="the task queue of --worker: nats://host:4222")
@handle_errors
def daemon(repo: str | None, data_dir: Path | None, config_file: Path | None, branch: str | None,
           root: Path | None, interval: float | None, drift_interval: float | None, on_interrupted: str | None,
           http_listen: str | None, log_format: str | None, worker: bool = False, roles: tuple[str, ...] = (),
           queue_url: str | None = None) -> None:
    """Watch the repository and apply every new commit of the branch (runs in the foreground)."""
    if worker:
        sys.exit(_worker(data_dir, roles, queue_url or "", log_format))
    def load() -> Settings:
        return settings_from(repo, data_dir, config_file, branch, root, interval=interval,
                             drift_interval=drift_interval, on_interrupted=on_interrupted,
                             http_listen=http_listen, log_format=log_format)

    from daemon import log  # structlog: not for `stratum notify` either

    settings = load()
    log.configure(settings.log_format)
    from daemon.service.daemon import Daemon  # the whole daemon: not for `stratum notify`, which git hooks call often

    Daemon(settings, reload=load).serve()


def _worker(data_dir: Path | None, roles: tuple[str, ...], queue_url: str, log_format: str | None) -> int:
    """`stratumd --worker`: run the workers plugins declare (reconcilers/plugin.py `worker`), no repository."""
    from daemon import log
    from daemon.errors import SettingsError
    from reconcilers.plugin import discover, load_target

    log.configure(log_format or "auto")
    targets = [p.worker for p in discover()[0] if p.worker]
    if not targets:
        raise SettingsError("no installed plugin runs workers", hint="install Stratum with its agents plugin")
    folder = data_dir or Path.home() / ".local" / "state" / "stratum" / "worker"
    folder.mkdir(parents=True, exist_ok=True)
    return int(load_target(targets[0])(folder, roles, queue_url))


@click.command("notify")
@common_options
@click.option("--reason", default="hook")
@handle_errors
def notify(repo: str | None, data_dir: Path | None, config_file: Path | None, branch: str | None,
           root: Path | None, reason: str) -> None:
    """Tell a running daemon to look at the branch now (git hooks call this); silent when none runs."""
    settings = settings_from(repo, data_dir, config_file, branch, root)
    try:
        api.call(settings.socket_path, "notify", timeout=5.0, reason=reason)
    except (OSError, ValueError):
        click.echo(f"stratum: no daemon listening on {settings.socket_path}", err=True)
        sys.exit(0)
