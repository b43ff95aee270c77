"""The default data directory is one per repository, and a data directory refuses another repository's use.

Real `stratum` processes in real repositories made by `stratum init`, from an empty HOME (no XDG_STATE_HOME,
no STRATUM_DATA_DIR): what a new user has."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from daemon.errors import SettingsError
from daemon.settings import default_data_dir, repo_identity
from tests.fixtures import clean_env, git
from tests.proc import ROOT

STRATUM = [sys.executable, "-c", "from daemon.cli.main import main; main()"]


def _env(home: Path) -> dict[str, str]:
    env = clean_env(home, {"PYTHONPATH": str(ROOT)})
    for name in ("XDG_STATE_HOME", "STATE_DIRECTORY", "STRATUM_DATA_DIR", "STRATUM_CONFIG"):
        env.pop(name, None)
    return env


def _stratum(cwd: Path, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*STRATUM, *args], cwd=cwd, env=_env(home), capture_output=True, text=True, timeout=300)


def _init(tmp: Path, home: Path, name: str) -> Path:
    done = _stratum(tmp, home, "init", name)
    assert done.returncode == 0, done.stderr
    repo = tmp / name
    if not git(repo, "rev-parse", "--verify", "-q", "HEAD", check=False):
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", "init")
    return repo


def test_two_repositories_never_share_the_default_data_directory(tmp_path: Path) -> None:
    """Issue 9 item 4: after `stratum init ops1` and `stratum init ops2`, apply/plan/status in each, from an
    empty HOME, see only their own repository; outside any repository, status refuses and says what to do."""
    home = tmp_path / "home"
    home.mkdir()
    ops1, ops2 = _init(tmp_path, home, "ops1"), _init(tmp_path, home, "ops2")
    head1, head2 = git(ops1, "rev-parse", "HEAD"), git(ops2, "rev-parse", "HEAD")
    root = ["--root", str(tmp_path / "root1")]
    applied = _stratum(ops1, home, "apply", *root)
    assert applied.returncode == 0, applied.stderr + applied.stdout
    plan2 = _stratum(ops2, home, "plan", "--root", str(tmp_path / "root2"))
    assert plan2.returncode == 0, plan2.stderr + plan2.stdout
    assert "can no longer be read" not in plan2.stdout + plan2.stderr
    status1 = json.loads(_stratum(ops1, home, "status", "--output", "json").stdout)
    status2 = json.loads(_stratum(ops2, home, "status", "--output", "json").stdout)
    assert status1["last_applied_revision"] == head1
    assert status2["last_applied_revision"] is None and head1 != head2
    state = home / ".local/state/stratum"
    dirs = sorted(p.name for p in state.iterdir())
    assert len(dirs) == 2 and dirs[0].startswith("ops1-") and dirs[1].startswith("ops2-"), dirs
    assert (state / dirs[0] / "repository").read_text().strip() == str(ops1.resolve())
    assert (state / dirs[1] / "repository").read_text().strip() == str(ops2.resolve())
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    lost = _stratum(outside, home, "status")
    assert lost.returncode == 1
    assert "is not inside a git repository" in lost.stderr and "--repo" in lost.stderr
    assert head1 not in lost.stdout + lost.stderr and "Traceback" not in lost.stderr


def test_a_data_directory_of_another_repository_is_refused(tmp_path: Path) -> None:
    """A data directory records its repository at the first apply; pointing another repository at it is a
    clear error for every verb, and nothing is written there."""
    home = tmp_path / "home"
    home.mkdir()
    ops1, ops2 = _init(tmp_path, home, "ops1"), _init(tmp_path, home, "ops2")
    data = tmp_path / "shared"
    assert _stratum(ops1, home, "apply", "--data-dir", str(data), "--root", str(tmp_path / "r")).returncode == 0
    before = sorted(p.name for p in data.iterdir())
    for verb in ("status", "log", "plan", "apply"):
        done = _stratum(ops2, home, verb, "--data-dir", str(data), "--root", str(tmp_path / "r"))
        assert done.returncode == 1, (verb, done.stdout)
        assert f"the data directory {data} belongs to the repository {ops1.resolve()}" in done.stderr, verb
        assert "Traceback" not in done.stderr
    assert sorted(p.name for p in data.iterdir()) == before


def test_the_default_is_keyed_by_path_or_url() -> None:
    """Same-named repositories at different paths get different directories; a URL's credentials are no part
    of its identity; systemd's StateDirectory is taken as given."""
    env = {"HOME": "/home/u"}
    assert repo_identity("https://user:secret@example.com/team/ops.git") == ("ops",
                                                                             "https://example.com/team/ops.git")
    a = default_data_dir(env, "https://example.com/a/ops.git")
    b = default_data_dir(env, "https://example.com/b/ops.git")
    assert a.parent == b.parent == Path("/home/u/.local/state/stratum") and a != b
    assert a.name.startswith("ops-") and b.name.startswith("ops-")
    assert default_data_dir({**env, "STATE_DIRECTORY": "/var/lib/stratum"}, "/nowhere") == Path("/var/lib/stratum")
    with pytest.raises(SettingsError):
        default_data_dir(env, "/")
