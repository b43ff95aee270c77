"""`stratum validate --data-dir DD` judges as the daemon on DD does (its root, its branch), whether the daemon
runs (asked over its socket) or ran there before (its persisted effective settings)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures import WorkRepo, bare_repo, infra_file
from tests.proc import ROOT, DaemonProc, cli_env

pytestmark = pytest.mark.slow

STRATUM = [sys.executable, "-c", "from daemon.cli.main import main; main()"]


def _validate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*STRATUM, "validate", *args, "--output", "json"], cwd=ROOT, env=cli_env(),
                          capture_output=True, text=True, timeout=300)


def test_validate_uses_the_daemons_root_not_data_dir_root(tmp_path: Path) -> None:
    """Issue 16 item 14: the daemon runs with --root elsewhere, where `out` is a symlink leaving the root; a
    commit writing through it is rejected by the daemon, and `validate --data-dir` says so too (it used to
    judge against <data-dir>/root and say ok), with the daemon up and after it stopped."""
    remote = bare_repo(tmp_path / "remote.git")
    work = WorkRepo(tmp_path / "work", remote=remote)
    work.commit({"infra/a.ncl": infra_file('    a = { kind = \'file, path = "a.txt", content = "a\\n" },')})
    work.push()
    root, data = tmp_path / "elsewhere-root", tmp_path / "data"
    root.mkdir()
    (tmp_path / "outside").mkdir()
    (root / "out").symlink_to(tmp_path / "outside")
    d = DaemonProc(str(remote), data, root)
    try:
        escape = '    a = { kind = \'file, path = "out/x.txt", content = "x\\n" },'
        bad = work.commit({"infra/a.ncl": infra_file(escape)})
        work.push()
        run = d.wait_run(bad)
        assert run["status"] == "rejected" and "symlink" in json.dumps(run["problems"])
        running = _validate("--repo", str(remote), "--data-dir", str(data))
        assert running.returncode == 1, running.stdout
        assert "symlink" in running.stdout
    finally:
        assert d.stop() == 0
    stopped = _validate("--repo", str(remote), "--data-dir", str(data))
    assert stopped.returncode == 1 and "symlink" in stopped.stdout
    explicit = _validate("--repo", str(remote), "--data-dir", str(data), "--root", str(tmp_path / "other"))
    assert explicit.returncode == 0, explicit.stdout        # an explicit --root still wins
    assert not (tmp_path / "outside/x.txt").exists()
