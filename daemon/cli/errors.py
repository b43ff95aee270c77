"""The one CLI error handler, and how the CLI keeps the daemon's log lines off the user's terminal.

Every verb (the spine's, `secret`, `kb`, and the stand-alone entries used by git drivers) maps errors here:

    StratumError           `error: what` (+ where, + hint) on stderr, its exit code (1; 2 for usage)
    OSError                `error: <strerror>: <path>` and a hint, exit 1 (an unreadable data dir, a full disk)
    KeyboardInterrupt      `interrupted`, exit 130
    any other Exception    `internal error: Type: message` and where to report it, exit 1; never a traceback
                           (STRATUM_DEBUG=1 shows it, for developers)

Click's own usage errors keep click's rendering (exit 2).
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

import click

from daemon.errors import StratumError

F = TypeVar("F", bound=Callable[..., Any])

_OS_HINT = "check the path and its permissions, and that the disk is not full"
_OS_HINTS = {
    errno.EADDRINUSE: "another process listens on that address: stop it, or choose another (--http-listen)",
    errno.EADDRNOTAVAIL: "that address is not on this host: check --http-listen",
    errno.ENOSPC: "the disk is full: free space and run the command again",
    errno.EACCES: "permission denied: check the owner and mode of the path (or run as its owner)",
    errno.EROFS: "the file system is read-only: choose a writable --data-dir",
}
BUG_HINT = "this is a bug in Stratum: please report it with the command you ran (STRATUM_DEBUG=1 shows details)"


def render_error(err: BaseException) -> tuple[str, int]:
    """The message (without the `error: ` prefix) and exit code for an exception a verb let through."""
    if isinstance(err, StratumError):
        return err.render(), err.exit_code
    if isinstance(err, OSError):
        where = f": {err.filename}" if err.filename else ""
        what = err.strerror or str(err) or type(err).__name__
        return f"{what}{where}\n  hint: {_OS_HINTS.get(err.errno or 0, _OS_HINT)}", 1
    return f"internal error: {type(err).__name__}: {err}\n  hint: {BUG_HINT}", 1


def report(err: BaseException) -> int:
    """Print `err` for a user on stderr; return the exit code."""
    if isinstance(err, KeyboardInterrupt):
        click.echo("interrupted", err=True)
        return 130
    if isinstance(err, BrokenPipeError):
        # The reader went away (`stratum log | head`): not an error of ours. Quiet, as a process killed by
        # SIGPIPE would be (128 + 13), with stdout pointed at /dev/null so the exit's flush raises nothing more.
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass     # stdout already closed or not a real file: nothing left to flush there
        return 141
    message, code = render_error(err)
    prefix = "" if message.startswith("internal error") else "error: "
    click.echo(f"{prefix}{message}", err=True)
    if os.environ.get("STRATUM_DEBUG") and not isinstance(err, StratumError):
        traceback.print_exception(err, file=sys.stderr)
    return code


def handle_errors(fn: F) -> F:
    """Wrap a verb: every error becomes a message and an exit code (see the module docstring)."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort, SystemExit):
            raise  # click and sys.exit carry their own exit codes and messages
        except (Exception, KeyboardInterrupt) as err:  # noqa: BLE001 the one place every error is rendered
            sys.exit(report(err))
    return wrapper  # type: ignore[return-value]


class StratumGroup(click.Group):
    """The `stratum` group: an error escaping any verb below it (verb groups included, whatever the entry
    point, click's test runner too) is rendered by `report`, never as a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        """Run the chosen verb under the one error handler."""
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort):
            raise
        except (Exception, KeyboardInterrupt) as err:  # noqa: BLE001 the one place every error is rendered
            ctx.exit(report(err))


def run_standalone(group: click.Command, argv: list[str] | None = None) -> int:
    """Run a click command outside the main `stratum` entry (git drivers, `python -m`), with the same error
    mapping; returns the exit code."""
    try:
        code = group.main(args=argv, prog_name="stratum", standalone_mode=False)
        return code if isinstance(code, int) else 0
    except click.exceptions.Exit as err:
        return int(err.exit_code)
    except click.ClickException as err:
        err.show()
        return err.exit_code
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except (Exception, KeyboardInterrupt) as err:  # noqa: BLE001 the one place every error is rendered
        return report(err)


def quiet_logs() -> None:
    """When a verb runs the pipeline in-process, the daemon's info lines (run, knowledge.indexed, ...) are not
    the user's business: only warnings and errors reach stderr, unless `stratum --verbose` asked for them."""
    from daemon import log

    ctx = click.get_current_context(silent=True)
    verbose = bool(ctx and ctx.find_root().params.get("verbose"))
    # Set up when structlog is first imported: a plan that logs nothing never loads it (daemon/log.py).
    log.configure_when_imported("console", sys.stderr, logging.INFO if verbose else logging.WARNING)
