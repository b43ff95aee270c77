"""The `stratum` command group; `stratumd` is `stratum daemon`."""

from __future__ import annotations

import importlib
import sys

import click

from daemon import __version__
from daemon.cli.completion import completion
from daemon.cli.control import resume, suspend, windows
from daemon.cli.daemon import daemon, notify
from daemon.cli.errors import StratumGroup
from daemon.cli.init import init
from daemon.cli.run import apply, plan, rollback
from daemon.cli.status import drift, events, log_cmd, status
from daemon.cli.validate import validate

EPILOG = """\b
Examples:
  stratum init ops && cd ops          a new ops repository from the example template
  stratum validate                    check the staged tree (what pre-commit runs)
  stratum plan                        what applying the branch would change, with diffs
  stratum apply                       apply the branch now
  stratumd                            watch the repository and apply every commit
  stratum status; stratum log         what is applied, and the newest runs
Exit codes: 0 success, 1 error or problems found, 2 usage error (plan --detailed-exitcode: 2 = changes)."""


@click.group(cls=StratumGroup, context_settings={"help_option_names": ["-h", "--help"]}, epilog=EPILOG)
@click.version_option(__version__, prog_name="stratum")
@click.option("--verbose", "-v", is_flag=True,
              help="show the pipeline's log lines when a verb runs it in-process (plan, apply, drift)")
def cli(verbose: bool) -> None:
    """Stratum: one Git repository runs a team's operations.

    Every verb takes --repo (default: the current directory) and --data-dir; with a daemon running on that
    data directory, verbs ask it, else they read the repository and the index themselves. `stratum VERB
    --help` shows each verb's options and examples.
    """


for command in (init, validate, plan, apply, status, log_cmd, drift, events, rollback, suspend, resume, windows,
                daemon, notify, completion):
    cli.add_command(command, name="log" if command is log_cmd else None)

# Verb groups of the other parts; a part whose module is missing is simply absent from the CLI.
for module, attr in (("daemon.cli.secret", "secret"), ("daemon.cli.kb", "kb")):
    try:
        cli.add_command(getattr(importlib.import_module(module), attr))
    except ModuleNotFoundError as err:
        if err.name != module:
            raise


def main() -> None:
    """Entry point of `stratum`: every error ends as a message and an exit code, never a traceback."""
    from daemon.cli.errors import run_standalone

    sys.exit(run_standalone(cli))


def daemon_main() -> None:
    """Entry point of `stratumd`."""
    daemon.main(prog_name="stratumd")
