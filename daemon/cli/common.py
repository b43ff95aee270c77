"""What every verb shares: the common options, settings, talking to a running daemon, output, errors."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import click

from daemon.cli.errors import handle_errors as handle_errors  # the one error handler (re-exported)
from daemon.errors import LockError, StratumError
from daemon.service import control_client as api
from daemon.settings import Settings, check_owner, load_settings, read_effective, recorded_repo, repo_identity
from reconcilers.verbs import common_options as common_options  # the contract's, shared with plugin verbs

F = TypeVar("F", bound=Callable[..., Any])


def output_option(fn: F) -> F:
    """--output text|json on a listing verb."""
    return click.option("--output", "-o", type=click.Choice(["text", "json"]), default="text",
                        help="output format")(fn)


def settings_from(repo: str | None, data_dir: Path | None, config_file: Path | None, branch: str | None,
                  root: Path | None, **extra: Any) -> Settings:
    """Settings from the common options. `--data-dir` alone, outside any repository (a task's command, a cron
    job), means the repository that data directory belongs to."""
    if repo is None and data_dir is not None and repo_identity(".") is None:
        repo = recorded_repo(data_dir.expanduser())
    flags = {"repo": repo or ".", "data_dir": data_dir, "branch": branch, "root": root, **extra}
    settings = load_settings(flags, config=config_file)
    check_owner(settings.data_dir, settings.repo)     # never show or change another repository's state
    return settings


def daemon_effective(settings: Settings) -> dict[str, str] | None:
    """The effective settings of the daemon on this data directory: asked over its socket when it runs,
    else what it persisted at its last start; None when no daemon ever ran there."""
    sock = daemon_socket(settings)
    if sock is not None:
        try:
            return {k: str(v) for k, v in api.call(sock, "settings", timeout=10.0)["settings"].items()}
        except (OSError, ValueError, KeyError, StratumError):
            pass                        # an older daemon without the operation: its persisted record
    return read_effective(settings.data_dir)


def as_the_daemon_runs(settings: Settings, *, root: Path | None, branch: str | None,
                       config_file: Path | None) -> Settings:
    """`settings` with what the data directory's daemon runs with (its root, branch and settings file) in
    place of the defaults, so a check agrees with the daemon's verdict; options given explicitly still win."""
    found = daemon_effective(settings)
    if not found:
        return settings
    config = found.get("config_path")
    if config_file is None and config and Path(config) != settings.config_path and Path(config).exists():
        settings = load_settings({"repo": settings.repo, "data_dir": settings.data_dir, "branch": branch,
                                  "root": root}, config=Path(config))
    changes: dict[str, Any] = {}
    if root is None and found.get("root"):
        changes["root"] = Path(found["root"])
    if branch is None and found.get("branch"):
        changes["branch"] = found["branch"]
    return replace(settings, **changes)


def daemon_socket(settings: Settings) -> Path | None:
    """The socket of a daemon running on this data directory, or None."""
    return settings.socket_path if api.daemon_running(settings.socket_path) else None


READER_WAIT_S = 30.0   # how long a reader waits for a daemon that is starting (or an apply in progress)


def read_model(settings: Settings, ask: Callable[[Path], Any], query: Callable[[Any], Any],
               wait: float = READER_WAIT_S) -> Any:
    """`ask(socket)` of the running daemon, else `query(index)` over the index opened read-only (see
    `daemon_or_local`)."""
    def local() -> Any:
        # Imported only when no daemon answers: DuckDB costs ~0.1 s of a `stratum status` the daemon serves.
        from daemon.index.store import Index

        index = Index(settings.index_path, read_only=True)
        try:
            return query(index)
        finally:
            index.close()
    return daemon_or_local(settings, ask, local, wait)


def daemon_or_local(settings: Settings, ask: Callable[[Path], Any], local: Callable[[], Any],
                    wait: float = READER_WAIT_S) -> Any:
    """`ask(socket)` of the running daemon, else `local()`, which may open the index itself.

    A CLI verb never stands in a daemon's way: while a daemon is starting (or a writer holds the index) it
    opens nothing and waits for the socket, bounded by `wait`; while `local()` runs it holds the data
    directory's apply lock shared, so a daemon starting meanwhile waits that out (bounded on its side too).
    """
    from daemon.service.lock import shared_read

    deadline = time.monotonic() + wait
    while True:
        sock = daemon_socket(settings)
        if sock is not None:
            try:
                return ask(sock)
            except ConnectionError:
                # The daemon stopped between being found and answering: ask the next one, or read the index
                # once it is released (a read is always answered, never an error, while daemons come and go).
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.1)
                continue
        with shared_read(settings.data_dir) as free:
            if free:
                return local()
        if time.monotonic() >= deadline:
            raise LockError(f"the index in {settings.data_dir} stayed busy for {wait:.0f} s and no daemon "
                            f"answered on {settings.socket_path}",
                            hint="a daemon is starting or an apply is running there: try again shortly, "
                                 "or see `journalctl -u stratumd`")
        time.sleep(0.1)


# What json.dumps(default=str) printed for these, orjson would print differently: kept as str() (the default).
_ORJSON_AS_BEFORE = ("OPT_PASSTHROUGH_DATACLASS", "OPT_PASSTHROUGH_DATETIME", "OPT_NON_STR_KEYS")


def emit_json(data: Any) -> None:
    """Print JSON to stdout (UTF-8): indented for a person at a terminal, compact for a pipe. orjson encodes a
    5,000-action plan in ~5 ms where json's C encoder took ~50 ms (and 1.7 s indented); a value orjson refuses
    (an integer over 64 bits) is printed by json instead."""
    import orjson

    option = orjson.OPT_INDENT_2 if sys.stdout.isatty() else 0
    for name in _ORJSON_AS_BEFORE:
        option |= getattr(orjson, name)
    try:
        text = orjson.dumps(data, default=str, option=option)
    except orjson.JSONEncodeError:
        text = json.dumps(data, indent=2 if option & orjson.OPT_INDENT_2 else None, default=str,
                          ensure_ascii=False).encode()
    # UTF-8 bytes to the binary stream; text to a stream that has none (a StringIO a caller swapped in)
    click.echo(text if hasattr(sys.stdout, "buffer") else text.decode())


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
