"""Start-up cost of the CLI: `stratum --help`/`--version` import no heavy library, and the lazy verb table in
daemon/cli/main.py stays true to the verbs themselves.

Speed itself is measured by bench/cli.py; these tests check the cause (what gets imported), which does not
depend on the machine's load.
"""

from __future__ import annotations

import json
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from daemon.cli.main import VERBS, cli, load_verb

HEAVY = ("duckdb", "pygit2", "numpy", "nickel", "mcp", "fastembed", "onnxruntime", "cryptography", "cedarpy",
         "structlog", "rich", "jinja2", "watchdog", "prometheus_client", "daemon.index", "daemon.pipeline",
         "daemon.runtime", "reconcilers.registry")


def _imported_after(code: str) -> set[str]:
    """The heavy modules present in sys.modules after running `code` in a fresh interpreter."""
    probe = (f"import sys\n{code}\n"
             f"import json; print(json.dumps([m for m in {list(HEAVY)!r} if m in sys.modules]))")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120)
    return set(json.loads(proc.stdout.strip().splitlines()[-1]))


def test_importing_the_cli_imports_no_heavy_library() -> None:
    """`import daemon.cli.main` (what both entry points do first) loads none of the heavy libraries."""
    assert _imported_after("import daemon.cli.main") == set()


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["-h"]])
def test_help_and_version_import_no_heavy_library(argv: list[str]) -> None:
    """`stratum --help` and `--version` print without importing a verb's dependencies."""
    code = ("from daemon.cli.main import main\n"
            f"try:\n    main.__globals__['cli'].main({argv!r}, prog_name='stratum', standalone_mode=False)\n"
            "except SystemExit:\n    pass")
    assert _imported_after(code) == set()


def test_help_lists_every_verb_with_its_own_summary() -> None:
    """The group's help shows each verb with the summary its own command declares."""
    result = CliRunner().invoke(cli, ["--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    for name in VERBS:
        assert f"  {name} " in result.output


@pytest.mark.parametrize("name", sorted(VERBS))
def test_verb_table_matches_the_command(name: str) -> None:
    """Each lazy entry names the real command, and its summary is that command's own first sentence."""
    command = load_verb(name)
    assert isinstance(command, click.Command)
    assert command.get_short_help_str(limit=10_000) == VERBS[name][2]


def test_a_verb_still_runs_and_shows_its_own_help() -> None:
    """A lazily loaded verb parses its options as before (its own --help lists them)."""
    result = CliRunner().invoke(cli, ["plan", "--help"])
    assert result.exit_code == 0, result.output
    assert "--detailed-exitcode" in result.output or "--base" in result.output


def test_an_unknown_verb_is_a_usage_error() -> None:
    """A mistyped verb is refused with click's usage error (exit 2), not a traceback."""
    result = CliRunner().invoke(cli, ["aply"])
    assert result.exit_code == 2
    assert "No such command 'aply'" in result.output
