"""The `stratum` command group; `stratumd` is `stratum daemon`."""

from __future__ import annotations

import importlib

import click

from daemon import __version__
from daemon.cli.control import resume, suspend, windows
from daemon.cli.daemon import daemon, notify
from daemon.cli.init import init
from daemon.cli.run import apply, plan, rollback
from daemon.cli.status import drift, events, log_cmd, status
from daemon.cli.validate import validate


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="stratum")
def cli() -> None:
    """Stratum: one Git repository runs a team's operations."""


for command in (init, validate, plan, apply, status, log_cmd, drift, events, rollback, suspend, resume, windows,
                daemon, notify):
    cli.add_command(command, name="log" if command is log_cmd else None)

# Verb groups of the other parts; a part whose module is missing is simply absent from the CLI.
for module, attr in (("daemon.cli.secret", "secret"), ("daemon.cli.kb", "kb")):
    try:
        cli.add_command(getattr(importlib.import_module(module), attr))
    except ModuleNotFoundError as err:
        if err.name != module:
            raise


def main() -> None:
    """Entry point of `stratum`."""
    cli(prog_name="stratum")


def daemon_main() -> None:
    """Entry point of `stratumd`."""
    daemon.main(prog_name="stratumd")
