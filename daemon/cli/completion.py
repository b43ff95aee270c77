"""`stratum completion bash|zsh|fish`: the shell completion script, from click's own completion support."""

from __future__ import annotations

import click

SHELLS = ("bash", "zsh", "fish")


@click.command("completion")
@click.argument("shell", type=click.Choice(SHELLS))
def completion(shell: str) -> None:
    """Print the completion script for SHELL (verbs, options, choices).

    \b
    Examples:
      eval "$(stratum completion bash)"                       # in ~/.bashrc
      eval "$(stratum completion zsh)"                        # in ~/.zshrc
      stratum completion fish > ~/.config/fish/completions/stratum.fish
    """
    from click.shell_completion import get_completion_class

    from daemon.cli.main import cli

    cls = get_completion_class(shell)
    if cls is None:  # click knows the three shells offered by the Choice above
        raise click.UsageError(f"no completion support for {shell}")
    click.echo(cls(cli, {}, "stratum", "_STRATUM_COMPLETE").source())
