"""What every verb shares: the common options, settings, talking to a running daemon, output, errors."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click

from daemon import api
from daemon.cli.errors import handle_errors as handle_errors  # the one error handler (re-exported)
from daemon.settings import Settings, load_settings

F = TypeVar("F", bound=Callable[..., Any])


def common_options(fn: F) -> F:
    """--repo, --data-dir, --config, --branch, --root on a verb."""
    for option in reversed([
        click.option("--repo", default=None, help="repository path or URL (default: the current directory)"),
        click.option("--data-dir", default=None, type=click.Path(path_type=Path),
                     help="state directory (default: $STATE_DIRECTORY or $XDG_STATE_HOME/stratum)"),
        click.option("--config", "config_file", default=None, type=click.Path(path_type=Path),
                     help="host settings file (default: <data-dir>/stratumd.toml)"),
        click.option("--branch", default=None, help="branch to watch (default: main)"),
        click.option("--root", default=None, type=click.Path(path_type=Path),
                     help="root of the local provider (default: <data-dir>/root)"),
    ]):
        fn = option(fn)
    return fn


def output_option(fn: F) -> F:
    """--output text|json on a listing verb."""
    return click.option("--output", "-o", type=click.Choice(["text", "json"]), default="text",
                        help="output format")(fn)


def settings_from(repo: str | None, data_dir: Path | None, config_file: Path | None, branch: str | None,
                  root: Path | None, **extra: Any) -> Settings:
    """Settings from the common options."""
    flags = {"repo": repo or ".", "data_dir": data_dir, "branch": branch, "root": root, **extra}
    return load_settings(flags, config=config_file)


def daemon_socket(settings: Settings) -> Path | None:
    """The socket of a daemon running on this data directory, or None."""
    return settings.socket_path if api.daemon_running(settings.socket_path) else None


def emit_json(data: Any) -> None:
    """Print JSON to stdout."""
    click.echo(json.dumps(data, indent=2, default=str))


@contextmanager
def progress(total: int, label: str) -> Iterator[Callable[[], None]]:
    """A progress bar on a TTY (stderr); a no-op elsewhere. Yields `advance()`."""
    if not sys.stderr.isatty() or total <= 1:
        yield lambda: None
        return
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda: bar.advance(task)
