"""What a plugin's CLI verbs share with the kernel's (part of the contract): the common options every verb
takes, and the kernel's VerbHost port, which the `stratum` group puts in click's root `ctx.obj`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from reconcilers.errors import SettingsError

if TYPE_CHECKING:
    from reconcilers.ports import VerbHost

F = TypeVar("F", bound=Callable[..., Any])


def common_options(fn: F) -> F:
    """--repo, --data-dir, --config, --branch, --root on a verb."""
    for option in reversed([
        click.option("--repo", default=None, help="repository path or URL (default: the current directory)"),
        click.option("--data-dir", default=None, type=click.Path(path_type=Path),
                     help="state directory (default: $STATE_DIRECTORY, else one per repository: "
                          "$XDG_STATE_HOME/stratum/<repo>-<hash>)"),
        click.option("--config", "config_file", default=None, type=click.Path(path_type=Path),
                     help="host settings file (default: <data-dir>/stratumd.toml)"),
        click.option("--branch", default=None, help="branch to watch (default: main)"),
        click.option("--root", default=None, type=click.Path(path_type=Path),
                     help="root of the local provider (default: <data-dir>/root)"),
    ]):
        fn = option(fn)
    return fn


def verb_host(group: str, hint: str = "") -> VerbHost:
    """The kernel's VerbHost of the running `stratum` command; a clear error when the verb group `group` runs
    outside it (it needs the kernel's ports)."""
    host = click.get_current_context().find_root().obj
    if host is None or not hasattr(host, "open"):
        raise SettingsError(f"`stratum {group}` runs under the `stratum` command (it needs the kernel's ports)",
                            hint=hint or f"run `stratum {group} ...`")
    found: VerbHost = host
    return found
