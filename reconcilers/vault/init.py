"""Wiring a repo for secrets: `.gitattributes` and the local git config of the diff and merge drivers.
`stratum init` calls `wire_repo`; it is idempotent.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

from reconcilers.vault.errors import VaultError

ATTRIBUTES_LINE = "secrets/**/*.yaml diff=stratum merge=stratum"
GIT_CONFIG = (
    ("diff.stratum.textconv", "stratum secret textconv"),
    ("diff.stratum.cachetextconv", "false"),
    ("merge.stratum.name", "Stratum secret manifest merge"),
    ("merge.stratum.driver", "stratum secret merge %O %A %B --path %P"),
)


def default_command() -> str:
    """How git should call Stratum's secret verbs: this very interpreter by absolute path, so `git diff` and
    `git merge` work from any shell, with or without the venv on PATH. `-P` keeps the current directory (the
    repository, whose content is untrusted) off the import path: a `daemon/` folder in it is never imported."""
    return f"{shlex.quote(sys.executable)} -P -m daemon.cli.secret"


def wire_repo(repo_dir: Path, command: str | None = None) -> None:
    """Add the attributes line (once) and set the repo-local git config for the textconv and merge driver.
    `command` is how git should call Stratum (default: `default_command()`)."""
    command = command or default_command()
    attributes = repo_dir / ".gitattributes"
    text = attributes.read_text() if attributes.exists() else ""
    if ATTRIBUTES_LINE not in text.splitlines():
        if text and not text.endswith("\n"):
            text += "\n"
        attributes.write_text(text + ATTRIBUTES_LINE + "\n")
    for key, value in GIT_CONFIG:
        value = value.replace("stratum secret", f"{command} secret", 1)
        result = subprocess.run(
            ["git", "-C", str(repo_dir), "config", "--local", key, value],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise VaultError(
                f"cannot set git config {key}: {result.stderr.strip()}",
                where=str(repo_dir),
                hint="is this a git repository? run `git init` first",
            )
