"""stratumd as a real process: triggers, coalescing, records, bad commits, restarts and SIGKILL mid-apply."""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.fixtures import WorkRepo, bare_repo, git, infra_file
from tests.proc import DaemonProc, index_rows, tree_of, wait_for

pytestmark = pytest.mark.slow


def _files(n: int, text: str) -> str:
    return infra_file("\n".join(
        f'    f{i} = {{ kind = \'file, path = "app/f{i}.txt", content = "{text} {i}\\n" }},' for i in range(n)))


@pytest.fixture
def pushed(tmp_path: Path) -> tuple[WorkRepo, Path]:
    """A bare repository (what the daemon watches) and a work clone that pushes to it."""
    remote = bare_repo(tmp_path / "remote.git")
    work = WorkRepo(tmp_path / "work", remote=remote)
    return work, remote


def test_push_is_applied_and_recorded(pushed: tuple[WorkRepo, Path], tmp_path: Path) -> None:
    """A push to the watched bare repo is applied, recorded with a git note, and served on /metrics."""
    work, remote = pushed
    first = work.commit({"infra/a.ncl": _files(3, "v1")})
    work.push()
    config = tmp_path / "stratumd.toml"
    config.write_text("[http]\nmetrics_public = true\n")   # /metrics otherwise needs a token (test_http_auth.py)
    d = DaemonProc(str(remote), tmp_path / "data", tmp_path / "root", "--config", str(config))
    try:
        assert d.wait_run(first)["status"] == "succeeded"
        assert (tmp_path / "root/app/f2.txt").read_text() == "v1 2\n"
        second = work.commit({"infra/a.ncl": _files(3, "v2")})
        work.push()
        run = d.wait_run(second, 10)
        assert run["status"] == "succeeded"
        assert (tmp_path / "root/app/f0.txt").read_text() == "v2 0\n"
        status = d.call("status")["status"]
        infra = status["reconcilers"]["infra"]
        assert infra["last_applied_revision"] == second
        assert infra["conditions"][0]["reason"] == "ReconciliationSucceeded"
        port = status["daemon"]["http_port"]
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert 'stratum_runs_total{outcome="succeeded"} 2.0' in metrics
        assert f'stratum_last_applied_revision_info{{revision="{second}"}} 1.0' in metrics
        note = git(remote, "notes", "--ref=stratum", "show", second)
        assert note.startswith("stratum: succeeded")
        lines = [e for e in d.log_events() if e.get("event") == "run"]
        assert [e["outcome"] for e in lines] == ["succeeded", "succeeded"]
    finally:
        assert d.stop() == 0


def test_burst_of_pushes_coalesces_and_records_every_commit(pushed: tuple[WorkRepo, Path], tmp_path: Path) -> None:
    """Five commits pushed at once give fewer runs than commits, end on the newest, and all are recorded."""
    work, remote = pushed
    work.commit({"infra/a.ncl": _files(2, "base")})
    work.push()
    d = DaemonProc(str(remote), tmp_path / "data", tmp_path / "root")
    try:
        d.wait_run(git(work.path, "rev-parse", "HEAD"))
        commits = [work.commit({"infra/a.ncl": _files(2, f"burst{i}")}) for i in range(5)]
        work.push()
        d.wait_run(commits[-1])
        d.stop()
        seen = {r[0] for r in index_rows(tmp_path / "data", "SELECT id FROM revisions")}
        assert set(commits) <= seen
        ran = [r[0] for r in index_rows(tmp_path / "data", "SELECT revision FROM runs")]
        assert commits[-1] in ran and len(ran) < 1 + len(commits)
        statuses = dict(index_rows(tmp_path / "data", "SELECT id, status FROM revisions"))
        assert statuses[commits[-1]] == "applied"
        assert all(statuses[c] in ("superseded", "applied") for c in commits)
        assert (tmp_path / "root/app/f1.txt").read_text() == "burst4 1\n"
    finally:
        d.stop()


def test_bad_commit_is_rejected_and_daemon_keeps_going(pushed: tuple[WorkRepo, Path], tmp_path: Path) -> None:
    """A syntax error is rejected with file:line, nothing changes, and the next good commit applies."""
    work, remote = pushed
    good = work.commit({"infra/a.ncl": _files(2, "good")})
    work.push()
    d = DaemonProc(str(remote), tmp_path / "data", tmp_path / "root")
    try:
        d.wait_run(good)
        before = tree_of(tmp_path / "root")
        bad = work.commit({"infra/a.ncl": "{ resources = { x = { kind = 'file, path = \"p\", content = 1 } }"})
        work.push()
        run = d.wait_run(bad)
        assert run["status"] == "rejected"
        assert run["problems"][0]["path"] == "infra/a.ncl" and run["problems"][0]["line"] == 1
        assert tree_of(tmp_path / "root") == before
        assert d.call("status")["status"]["last_applied_revision"] == good
        fixed = work.commit({"infra/a.ncl": _files(2, "fixed")})
        work.push()
        assert d.wait_run(fixed)["status"] == "succeeded"
    finally:
        d.stop()


def test_force_push_and_deleted_branch(pushed: tuple[WorkRepo, Path], tmp_path: Path) -> None:
    """A rewritten history is applied with an event; a deleted branch keeps the last state in force."""
    work, remote = pushed
    work.commit({"infra/a.ncl": _files(1, "one")})
    second = work.commit({"infra/a.ncl": _files(1, "two")})
    work.push()
    d = DaemonProc(str(remote), tmp_path / "data", tmp_path / "root")
    try:
        d.wait_run(second)
        git(work.path, "reset", "-q", "--hard", "HEAD~1")
        rewritten = work.commit({"infra/a.ncl": _files(1, "rewritten")})
        work.push("--force")
        assert d.wait_run(rewritten)["status"] == "succeeded"
        kinds = {e["kind"] for e in d.call("events")["events"]}
        assert "history_rewritten" in kinds
        git(remote, "update-ref", "-d", "refs/heads/main")
        d.call("notify", reason="test")
        wait_for(lambda: "branch_missing" in {e["kind"] for e in d.call("events")["events"]}, 10)
        assert (tmp_path / "root/app/f0.txt").read_text() == "rewritten 0\n"
        assert d.call("status")["status"]["last_applied_revision"] == rewritten
    finally:
        d.stop()


def test_remote_url_is_mirrored_and_fetched(pushed: tuple[WorkRepo, Path], tmp_path: Path) -> None:
    """A remote URL is mirror-cloned and fetched every interval; new pushes are applied."""
    work, remote = pushed
    first = work.commit({"infra/a.ncl": _files(1, "r1")})
    work.push()
    d = DaemonProc(f"file://{remote}", tmp_path / "data", tmp_path / "root", "--interval", "0.3")
    try:
        d.wait_run(first)
        second = work.commit({"infra/a.ncl": _files(1, "r2")})
        work.push()
        assert d.wait_run(second, 15)["status"] == "succeeded"
        assert (tmp_path / "data/mirror.git/HEAD").exists()
    finally:
        d.stop()


def test_post_receive_hook_notifies(pushed: tuple[WorkRepo, Path], tmp_path: Path) -> None:
    """hooks/post-receive, installed in the bare repo, reaches the daemon's socket."""
    work, remote = pushed
    first = work.commit({"infra/a.ncl": _files(1, "h1")})
    work.push()
    d = DaemonProc(str(remote), tmp_path / "data", tmp_path / "root")
    try:
        d.wait_run(first)
        hook = remote / "hooks" / "post-receive"
        shutil.copyfile(Path(__file__).resolve().parents[2] / "hooks" / "post-receive", hook)
        hook.chmod(0o755)
        git(remote, "config", "stratum.dataDir", str(tmp_path / "data"))
        second = work.commit({"infra/a.ncl": _files(1, "h2")})
        out = subprocess.run(["git", "push", "-q", "origin", "main"], cwd=work.path, capture_output=True,
                             text=True, check=True)
        assert "no daemon" not in out.stderr
        run = d.wait_run(second)
        assert run["status"] == "succeeded"
    finally:
        d.stop()


def test_corrupt_index_is_rebuilt_from_git(pushed: tuple[WorkRepo, Path], tmp_path: Path) -> None:
    """A garbage index file is moved aside; the last good revision is recovered from the git notes."""
    work, remote = pushed
    first = work.commit({"infra/a.ncl": _files(2, "keep")})
    work.push()
    d = DaemonProc(str(remote), tmp_path / "data", tmp_path / "root")
    d.wait_run(first)
    d.stop()
    (tmp_path / "data/index.duckdb").write_bytes(b"this is not a database" * 100)
    (tmp_path / "data/index.duckdb.wal").unlink(missing_ok=True)
    d = DaemonProc(str(remote), tmp_path / "data", tmp_path / "root")
    try:
        assert any(e.get("event") == "index_corrupt" for e in d.log_events())
        assert list((tmp_path / "data").glob("index.duckdb.corrupt-*"))
        wait_for(lambda: d.call("status")["status"]["last_applied_revision"] == first, 10)
    finally:
        d.stop()


SLOW_INFRA = """
    base = {{ kind = 'file, path = "state/base.txt", content = "{tag}\\n" }},
    step1 = {{ kind = 'command, run = "echo {tag} >> state/journal; sleep 0.4", depends_on = ["base"],
              compensate = "echo undo1-{tag} >> state/journal" }},
    step2 = {{ kind = 'command, run = "echo {tag}-2 >> state/journal; sleep 0.4", depends_on = ["step1"] }},
    after = {{ kind = 'file, path = "state/after.txt", content = "{tag}\\n", depends_on = ["step2"] }},
"""


@pytest.mark.parametrize("delay", [0.15, 0.45, 0.75])
def test_sigkill_mid_apply_rolls_back_on_restart(pushed: tuple[WorkRepo, Path], tmp_path: Path,
                                                  delay: float) -> None:
    """Killed with SIGKILL mid-apply, repeatedly: restart finds the run, rolls it back to the last good
    revision (compensations included), and leaves no run unfinalized."""
    work, remote = pushed
    good = work.commit({"infra/a.ncl": infra_file(SLOW_INFRA.format(tag="good"))})
    work.push()
    d = DaemonProc(str(remote), tmp_path / "data", tmp_path / "root")
    d.wait_run(good)
    for attempt in range(2):
        tag = f"bad{attempt}"
        rev = work.commit({"infra/a.ncl": infra_file(SLOW_INFRA.format(tag=tag))})
        work.push()
        wait_for(lambda t=tag: (tmp_path / "root/state/base.txt").read_text() == f"{t}\n", 10, 0.005)
        time.sleep(delay)
        d.kill()
        pending = index_rows(tmp_path / "data", "SELECT id FROM runs WHERE status = 'running'")
        assert len(pending) == 1, "the killed run is left running in the index"
        d = DaemonProc(str(remote), tmp_path / "data", tmp_path / "root")
        run = d.wait_run(rev)
        assert run["status"] == "rolled_back", run
        assert "interrupted" in run["message"]
        assert (tmp_path / "root/state/base.txt").read_text() == "good\n"
        assert (tmp_path / "root/state/after.txt").read_text() == "good\n"
        assert d.call("status")["status"]["last_applied_revision"] == good
        journal = (tmp_path / "root/state/journal").read_text()
        if f"{tag}\n" in journal:
            assert f"undo1-{tag}" in journal, "step1 ran, so its compensation must have run"
        rows = index_rows(tmp_path / "data", "SELECT count(*) FROM runs WHERE status = 'running'") \
            if d.stop() == 0 else []
        assert rows == [(0,)]
        d = DaemonProc(str(remote), tmp_path / "data", tmp_path / "root")
    d.stop()


def test_recovery_that_raises_marks_the_run_and_the_daemon_serves(pushed: tuple[WorkRepo, Path],
                                                                  tmp_path: Path) -> None:
    """Issue 16 item 12: killed mid-apply, then recovery itself raises (the interrupted run's checkpoint
    records are damaged, so rebuilding its actions fails with a KeyError, as the day-one defect's did): the
    daemon still starts, the run is `recovery_failed` with the reason, status says so, and the next good
    commit applies."""
    from daemon.index.store import Index

    work, remote = pushed
    good = work.commit({"infra/a.ncl": infra_file(SLOW_INFRA.format(tag="good"))})
    work.push()
    d = DaemonProc(str(remote), tmp_path / "data", tmp_path / "root")
    d.wait_run(good)
    bad = work.commit({"infra/a.ncl": infra_file(SLOW_INFRA.format(tag="bad"))})
    work.push()
    wait_for(lambda: (tmp_path / "root/state/base.txt").read_text() == "bad\n", 10, 0.005)
    d.kill()
    index = Index(tmp_path / "data/index.duckdb")       # replays the journal of the killed daemon first
    try:
        [(run_id,)] = index.query("SELECT id FROM runs WHERE status = 'running'")
        assert index.query("SELECT count(*) FROM actions WHERE run_id = ?", [run_id])[0][0] >= 1
        index.execute("UPDATE actions SET action = '{\"damaged\": true}' WHERE run_id = ?", [run_id])
    finally:
        index.close()
    d = DaemonProc(str(remote), tmp_path / "data", tmp_path / "root")   # fails the test if start-up crashes
    try:
        run = d.wait_run(bad)
        assert run["status"] == "recovery_failed", run
        assert "recovery failed (KeyError" in run["message"] and "stratum drift" in run["message"]
        cond = d.call("status")["status"]["reconcilers"]["infra"]["conditions"][0]
        assert (cond["status"], cond["reason"]) == ("False", "RecoveryFailed")
        assert any(e["kind"] == "recovery_failed" for e in d.call("events")["events"])
        assert d.proc.poll() is None
        fixed = work.commit({"infra/a.ncl": infra_file(SLOW_INFRA.format(tag="fixed"))})
        work.push()
        assert d.wait_run(fixed)["status"] == "succeeded"
        assert (tmp_path / "root/state/after.txt").read_text() == "fixed\n"
    finally:
        assert d.stop() == 0


def test_sigkill_then_resume_setting_finishes_the_revision(pushed: tuple[WorkRepo, Path], tmp_path: Path) -> None:
    """With on_interrupted = resume, the restarted daemon applies the interrupted revision to the end."""
    work, remote = pushed
    good = work.commit({"infra/a.ncl": infra_file(SLOW_INFRA.format(tag="good"))})
    work.push()
    d = DaemonProc(str(remote), tmp_path / "data", tmp_path / "root")
    d.wait_run(good)
    rev = work.commit({"infra/a.ncl": infra_file(SLOW_INFRA.format(tag="next"))})
    work.push()
    wait_for(lambda: (tmp_path / "root/state/base.txt").read_text() == "next\n", 10, 0.005)
    d.kill()
    d = DaemonProc(str(remote), tmp_path / "data", tmp_path / "root", "--on-interrupted", "resume")
    try:
        wait_for(lambda: any(r["revision"] == rev and r["status"] == "succeeded" for r in d.runs()), 20)
        assert (tmp_path / "root/state/after.txt").read_text() == "next\n"
    finally:
        d.stop()


def test_periodic_drift_check_corrects_and_reports(pushed: tuple[WorkRepo, Path], tmp_path: Path) -> None:
    """The periodic drift check restores a 'correct resource and only records an event for a 'detect one."""
    work, remote = pushed
    rev = work.commit({"infra/a.ncl": infra_file("""
    fixed = { kind = 'file, path = "etc/fixed.conf", content = "desired\\n", drift = 'correct },
    watched = { kind = 'file, path = "etc/watched.conf", content = "desired\\n", drift = 'detect },
""")})
    work.push()
    d = DaemonProc(str(remote), tmp_path / "data", tmp_path / "root")
    d.stop()
    d = DaemonProc(str(remote), tmp_path / "data", tmp_path / "root", "--drift-interval", "0.3")
    try:
        # The first daemon may have been stopped mid-run: this one rolls that back and applies the head again.
        wait_for(lambda: any(r["revision"] == rev and r["status"] == "succeeded" for r in d.runs()), 20)
        (tmp_path / "root/etc/fixed.conf").write_text("edited by hand\n")
        (tmp_path / "root/etc/watched.conf").write_text("edited by hand\n")
        wait_for(lambda: (tmp_path / "root/etc/fixed.conf").read_text() == "desired\n", 15)
        # The two hand edits may straddle a drift check: wait for the check that saw the second one.
        def watched_event() -> list[dict[str, str]]:
            drift = [e for e in d.call("events")["events"] if e["kind"] == "drift"]
            return drift if any("watched" in e["message"] for e in drift) else []
        drift = wait_for(watched_event, 15)
        assert "infra/a.ncl" in {e["subject"] for e in drift}
        assert (tmp_path / "root/etc/watched.conf").read_text() == "edited by hand\n"
        wait_for(lambda: any(r["trigger"] == "drift" and r["status"] == "succeeded" for r in d.runs()), 10)
    finally:
        d.stop()


def test_idle_daemon_does_not_wake_on_ref_reads(pushed: tuple[WorkRepo, Path], tmp_path: Path) -> None:
    """Reading the watched ref (as git and the daemon itself do) never wakes the main loop: idle means idle."""
    work, remote = pushed
    rev = work.commit({"infra/a.ncl": _files(1, "idle")})
    work.push()
    d = DaemonProc(str(remote), tmp_path / "data", tmp_path / "root")
    try:
        d.wait_run(rev)
        time.sleep(0.3)

        def loops() -> int:
            """Iterations, less the idle release's own (its deadline, and a status request opening the released
            index again: daemon/service/idle.py)."""
            facts = d.call("status")["status"]["daemon"]
            return int(facts["loops"]) - sum(facts["wakes"].get(r, 0) for r in ("timeout", "index-opened"))
        before = loops()
        for _ in range(20):
            git(remote, "rev-parse", "refs/heads/main")
            (remote / "refs/heads/main").read_text()
        time.sleep(1.0)
        assert loops() == before
        d.call("notify", reason="test")
        wait_for(lambda: loops() > before, 5)
    finally:
        d.stop()
