"""The `stratum` command group; `stratumd` is `stratum daemon`.

Verbs are loaded lazily: `stratum --help` and `--version` import click and nothing else of weight, and a verb
imports only its own module (the index, git, Nickel, crypto and embedding libraries cost seconds together).
Each verb's one-line summary is kept here for the group's help (a reconciler plugin declares its verb groups'
summaries as data: reconcilers/plugin.py); tests/daemon/test_cli_startup.py checks that each matches the verb's
own help, so the two cannot drift.
"""

from __future__ import annotations

import functools
import gc
import importlib
import os
import sys
import threading
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from click.shell_completion import CompletionItem

from daemon import __version__
from daemon.cli.errors import StratumGroup

# name -> (module, attribute, one-line summary shown by `stratum --help`), in the order `--help` lists them.
VERBS: dict[str, tuple[str, str, str]] = {
    "init": ("daemon.cli.init", "init", "Create a new ops repository in DIRECTORY from the example template."),
    "validate": ("daemon.cli.validate", "validate",
                 "Check the repository: Nickel contracts, references, secrets, knowledge."),
    "plan": ("daemon.cli.run", "plan",
             "Show what applying a revision would change, with diffs (exit 1 when the revision would be rejected)."),
    "apply": ("daemon.cli.run", "apply",
              "Apply a revision now, or exactly the plan saved in PLAN_FILE (through the daemon when one runs)."),
    "status": ("daemon.cli.status", "status",
               "Where things stand: repository, daemon, applied revision, suspension, Ready per reconciler."),
    "log": ("daemon.cli.status", "log_cmd", "The newest runs with their outcome."),
    "drift": ("daemon.cli.status", "drift",
              "Compare the host with the last applied revision (exit 1 when anything drifted)."),
    "events": ("daemon.cli.status", "events",
               "Recorded events: drift, rewritten history, missing branch, failed fetches."),
    "rollback": ("daemon.cli.run", "rollback",
                 "Apply an earlier REVISION; it stays in force until the next commit on the branch."),
    "suspend": ("daemon.cli.control", "suspend",
                "Stop applying: new commits are recorded but not applied until `stratum resume`."),
    "resume": ("daemon.cli.control", "resume",
               "Apply again: the newest recorded commit runs (unless a deny window is active)."),
    "windows": ("daemon.cli.control", "windows",
                "The host's sync windows ([[windows]] in stratumd.toml) and whether applying is allowed now."),
    "daemon": ("daemon.cli.daemon", "daemon",
               "Watch the repository and apply every new commit of the branch (runs in the foreground)."),
    "notify": ("daemon.cli.daemon", "notify",
               "Tell a running daemon to look at the branch now (git hooks call this); silent when none runs."),
    "completion": ("daemon.cli.completion", "completion",
                   "Print the completion script for SHELL (verbs, options, choices)."),
}


@functools.cache
def all_verbs() -> dict[str, tuple[str, str, str]]:
    """The kernel's verbs, then each reconciler plugin's verb groups (`stratum secret`, `stratum kb`, a
    third-party plugin's), in plugin order. Plugins declare their verbs as data (reconcilers/plugin.py), so
    listing them imports no reconciler; a plugin cannot replace a kernel verb."""
    from reconcilers.plugin import discover

    verbs = dict(VERBS)
    for plugin in discover()[0]:
        for verb in plugin.verbs:
            module, _, attr = verb.target.partition(":")
            verbs.setdefault(verb.name, (module, attr, verb.summary))
    return verbs


def load_verb(name: str) -> click.Command | None:
    """Import the module of verb `name` and return its command; None when that module is not installed
    (a part whose module is missing is simply absent from the CLI)."""
    module, attr, _ = VERBS[name] if name in VERBS else all_verbs()[name]
    try:
        command: click.Command = getattr(importlib.import_module(module), attr)
    except ModuleNotFoundError as err:
        if err.name != module:
            raise
        return None
    return command


class LazyGroup(StratumGroup):
    """A group whose verbs are imported when invoked (or asked for their own help), not at start-up; errors of
    every verb below it go through the one error handler (StratumGroup)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        """Every registered verb: the kernel's in the order of VERBS, then the plugins'."""
        verbs = all_verbs()
        return [*verbs, *(n for n in super().list_commands(ctx) if n not in verbs)]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        """The verb's command, importing its module on first use (a kernel verb needs no plugin lookup)."""
        if cmd_name in self.commands or (cmd_name not in VERBS and cmd_name not in all_verbs()):
            return super().get_command(ctx, cmd_name)
        if _collector_off and cmd_name not in FAST_EXIT_VERBS:
            gc.enable()                          # main() turned it off for a verb that ends the process soon
        command = load_verb(cmd_name)
        if command is not None:
            self.add_command(command, cmd_name)
            _invoked.append(cmd_name)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The verb list of `--help` from the summaries in VERBS, without importing any verb."""
        names = self.list_commands(ctx)
        verbs = all_verbs()
        limit = formatter.width - 6 - max(len(n) for n in names)
        rows = []
        for name in names:
            if name in verbs:
                # A bare Command shortens the summary exactly as the real verb's would be shortened.
                rows.append((name, click.Command(name, help=verbs[name][2]).get_short_help_str(limit)))
            else:
                cmd = self.commands[name]
                if not cmd.hidden:
                    rows.append((name, cmd.get_short_help_str(limit)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)


    def shell_complete(self, ctx: click.Context, incomplete: str) -> list[CompletionItem]:
        """Verb names for shell completion from VERBS, so pressing TAB imports no verb; then the group's own
        options (click.Command's completion, skipping click.Group's, which would load every verb)."""
        from click.shell_completion import CompletionItem

        results = [CompletionItem(name, help=summary) for name, (_, _, summary) in all_verbs().items()
                   if name.startswith(incomplete)]
        results.extend(click.Command.shell_complete(self, ctx, incomplete))
        return results


EPILOG = """\b
Examples:
  stratum init ops && cd ops          a new ops repository from the example template
  stratum validate                    check the staged tree (what pre-commit runs)
  stratum plan                        what applying the branch would change, with diffs
  stratum apply                       apply the branch now
  stratumd                            watch the repository and apply every commit
  stratum status; stratum log         what is applied, and the newest runs
Exit codes: 0 success, 1 error or problems found, 2 usage error (plan --detailed-exitcode: 2 = changes)."""


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]}, epilog=EPILOG)
@click.version_option(__version__, prog_name="stratum")
@click.option("--verbose", "-v", is_flag=True,
              help="show the pipeline's log lines when a verb runs it in-process (plan, apply, drift)")
@click.pass_context
def cli(ctx: click.Context, verbose: bool) -> None:
    """Stratum: one Git repository runs a team's operations.

    Every verb takes --repo (default: the current directory) and --data-dir; with a daemon running on that
    data directory, verbs ask it, else they read the repository and the index themselves. `stratum VERB
    --help` shows each verb's options and examples.
    """
    from daemon.cli.plugin_host import PluginHost

    # A plugin's verbs (reconcilers/<name>/cli.py) reach the daemon's ports through this (VerbHost).
    ctx.obj = PluginHost()


# Verbs that only read (the repository, the host, the index) and hold nothing open when they return: their
# process ends without the interpreter's teardown, which freed every object one by one (~0.25 s of CPU after a
# 5,000-resource plan had printed). Verbs that write state keep the normal exit and its atexit handlers.
FAST_EXIT_VERBS = frozenset({"validate", "plan"})
_invoked: list[str] = []                     # the verb this process runs (LazyGroup.get_command)
# Those verbs also run without automatic garbage collection: the process ends within seconds, and the
# collector's ~100 passes over what the imports made (every module, class and function) freed nothing while
# costing ~0.1 s of a `stratum validate` of the template; the pipeline's own load and plan pause it already
# (daemon/run/gcpolicy.py). Any other verb turns it back on as soon as it is known (LazyGroup.get_command).
_collector_off = False


def main() -> None:
    """Entry point of `stratum`: every error ends as a message and an exit code, never a traceback."""
    from daemon.cli.errors import run_standalone

    global _collector_off
    if gc.isenabled():
        gc.disable()
        _collector_off = True
    try:
        code: object = run_standalone(cli)
    except SystemExit as done:                  # a verb's own sys.exit(code)
        code = done.code
    if _invoked and _invoked[-1] in FAST_EXIT_VERBS and (code is None or isinstance(code, int)) \
            and threading.active_count() == 1:
        # Output first (a pipe's reader gets everything), then exit without tearing the heap down.
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except (OSError, ValueError):
            os._exit(code or 141)               # the reader went away (as errors.report's SIGPIPE code)
        os._exit(code or 0)
    sys.exit(code)  # type: ignore[arg-type]  # SystemExit takes any object: str codes print as messages


def daemon_main() -> None:
    """Entry point of `stratumd`."""
    from daemon.cli.daemon import daemon

    daemon.main(prog_name="stratumd")
