"""`stratum init DIR` names the repository after DIR when --name is not given.

Two repositories made within the same second used to get byte-identical first commits (the same template with
the same name, the same time and author), so two repositories shared one commit id: seen as
tests/daemon/test_data_dir.py failing `head1 != head2` once `stratum init` got fast.
"""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from daemon.cli.main import cli
from tests.fixtures import git


def _init(tmp_path: Path, *args: str) -> Path:
    result = CliRunner().invoke(cli, ["init", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return tmp_path / args[0].rpartition("/")[2]


def test_two_repositories_made_at_once_differ_and_are_named_after_their_directory(tmp_path: Path) -> None:
    one, two = _init(tmp_path, str(tmp_path / "ops1")), _init(tmp_path, str(tmp_path / "ops2"))
    assert 'name = "ops1"' in (one / "stratum.ncl").read_text()
    assert 'name = "ops2"' in (two / "stratum.ncl").read_text()
    assert git(one, "rev-parse", "HEAD") != git(two, "rev-parse", "HEAD")


def test_an_explicit_name_wins_and_an_unusual_directory_keeps_the_template_name(tmp_path: Path) -> None:
    named = _init(tmp_path, str(tmp_path / "ops3"), "--name", "payments-ops")
    assert 'name = "payments-ops"' in (named / "stratum.ncl").read_text()
    odd = _init(tmp_path, str(tmp_path / 'we"ird %{dir}'))
    assert 'name = "example-ops"' in (odd / "stratum.ncl").read_text()
