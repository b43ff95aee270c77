"""Start-up recovery that cannot finish never becomes a crash loop: a real daemon process whose (test)
reconciler raises while rolling back an interrupted run still starts, records `recovery_failed` with the
reason, serves status, and applies the next good commit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from daemon.service import control_socket as api
from tests.fixtures import WorkRepo, bare_repo, infra_file
from tests.proc import ROOT, DaemonProc, cli_env, wait_for

pytestmark = pytest.mark.slow

SLOW = """
    base = {{ kind = 'file, path = "state/base.txt", content = "{tag}\\n" }},
    step = {{ kind = 'command, run = "sleep 1.5", depends_on = ["base"] }},
    after = {{ kind = 'file, path = "state/after.txt", content = "{tag}\\n", depends_on = ["step"] }},
"""
# The daemon with the test reconciler registered in place of `infra` (the registry is read at start).
LAUNCH = ("from reconcilers import registry; "
          "registry.REGISTRY['infra'] = 'tests.daemon.failing_reconciler:FailingInfra'; "
          "from daemon.cli.main import daemon_main; daemon_main()")


def _daemon(remote: Path, data: Path, root: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-c", LAUNCH, "--repo", str(remote), "--data-dir", str(data),
                                 "--root", str(root), "--log-format", "json", "--drift-interval", "0"],
                                cwd=ROOT, env=cli_env(), stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    wait_for(lambda: proc.poll() is not None or api.daemon_running(data / "stratumd.sock"), 60)
    assert proc.poll() is None, log.read_text()
    return proc


def _run(data: Path, revision: str) -> dict[str, object]:
    def finished() -> dict[str, object] | None:
        for r in api.call(data / "stratumd.sock", "log", limit=50)["runs"]:
            if r["revision"] == revision and r["status"] != "running":
                return dict(r)
        return None
    return dict(wait_for(finished, 60))


def test_a_reconciler_raising_during_recovery_does_not_stop_the_daemon(tmp_path: Path) -> None:
    """Issue 16 item 12, with a reconciler that raises while the interrupted run is rolled back."""
    remote = bare_repo(tmp_path / "remote.git")
    work = WorkRepo(tmp_path / "work", remote=remote)
    data, root, log = tmp_path / "data", tmp_path / "root", tmp_path / "daemon.log"
    good = work.commit({"infra/a.ncl": infra_file(SLOW.format(tag="good"))})
    work.push()
    d = DaemonProc(str(remote), data, root)
    d.wait_run(good)
    bad = work.commit({"infra/a.ncl": infra_file(SLOW.format(tag="bad"))})
    work.push()
    wait_for(lambda: (root / "state/base.txt").read_text() == "bad\n", 20, 0.005)
    d.kill()
    (data / "fail-observe").touch()
    proc = _daemon(remote, data, root, log)
    try:
        run = _run(data, bad)
        assert run["status"] == "recovery_failed", run
        assert "RuntimeError: injected: observe failed" in str(run["message"])
        status = api.call(data / "stratumd.sock", "status")["status"]
        cond = status["reconcilers"]["infra"]["conditions"][0]
        assert (cond["status"], cond["reason"]) == ("False", "RecoveryFailed")
        assert status["last_applied_revision"] == good
        (data / "fail-observe").unlink()
        fixed = work.commit({"infra/a.ncl": infra_file(SLOW.format(tag="fixed"))})
        work.push()
        assert _run(data, fixed)["status"] == "succeeded"
        assert (root / "state/after.txt").read_text() == "fixed\n"
        assert proc.poll() is None
    finally:
        proc.terminate()
        assert proc.wait(timeout=60) == 0
