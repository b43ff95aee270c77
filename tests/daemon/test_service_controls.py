"""stratumd's controls as a real process: suspend/resume, deny windows that queue work, SIGHUP reloads of
host settings, the webhook receiver triggering a fetch, and a graceful SIGTERM mid-apply."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.fixtures import WorkRepo, bare_repo, git, infra_file
from tests.proc import DaemonProc, cli_env, index_rows, wait_for

pytestmark = pytest.mark.slow


def _motd(text: str) -> dict[str, str]:
    return {"infra/motd.ncl": infra_file(f'    motd = {{ kind = \'file, path = "etc/motd", content = "{text}\\n" }},')}


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", "from daemon.cli.main import main; main()", *args],
                          env=cli_env(), capture_output=True, text=True, timeout=60, check=False)


def _revision_status(d: DaemonProc, revision: str) -> str | None:
    for e in d.call("events", limit=200)["events"]:
        if e.get("revision") == revision and e["kind"] == "queued":
            return "queued"
    return None


@pytest.fixture
def pushed(tmp_path: Path) -> tuple[WorkRepo, Path]:
    """A bare repository (what the daemon watches) and a work clone that pushes to it."""
    remote = bare_repo(tmp_path / "remote.git")
    work = WorkRepo(tmp_path / "work", remote=remote)
    work.commit(_motd("one"))
    work.push()
    return work, remote


def test_suspend_records_commits_without_applying_and_resume_runs_the_newest(
        pushed: tuple[WorkRepo, Path], tmp_path: Path) -> None:
    """While suspended a pushed commit is recorded and queued, not applied; `stratum resume` applies it."""
    work, remote = pushed
    data, root = tmp_path / "data", tmp_path / "root"
    d = DaemonProc(str(remote), data, root)
    try:
        d.wait_run(git(work.path, "rev-parse", "HEAD"))
        out = _cli("suspend", "--repo", str(remote), "--data-dir", str(data), "--reason", "incident 42",
                   "--output", "json")
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["suspended"] is True
        second = work.commit(_motd("two"))
        work.push()
        wait_for(lambda: _revision_status(d, second) == "queued", 15)
        assert (root / "etc/motd").read_text() == "one\n"
        assert d.call("status")["status"]["suspended"] is True
        refused = _cli("apply", "--repo", str(remote), "--data-dir", str(data))
        assert refused.returncode != 0 and "suspended" in refused.stderr + refused.stdout
        out = _cli("resume", "--repo", str(remote), "--data-dir", str(data))
        assert out.returncode == 0, out.stderr
        assert d.wait_run(second, 15)["status"] == "succeeded"
        assert (root / "etc/motd").read_text() == "two\n"
        kinds = [e["kind"] for e in d.call("events", limit=50)["events"]]
        assert "suspended" in kinds and "resumed" in kinds
    finally:
        assert d.stop() == 0


def _window_ending_soon(seconds: int) -> str:
    """A deny window that started at this minute's cron fire and ends `seconds` from now."""
    now = datetime.now(UTC)
    return (f'[[windows]]\nkind = "deny"\nname = "test freeze"\nschedule = "{now.minute} {now.hour} * * *"\n'
            f'duration = "{now.second + seconds}s"\n')


def test_deny_window_queues_a_commit_and_runs_it_when_the_window_ends(
        pushed: tuple[WorkRepo, Path], tmp_path: Path) -> None:
    """A commit pushed inside a deny window is queued (not dropped) and applied once the window ends."""
    work, remote = pushed
    data, root = tmp_path / "data", tmp_path / "root"
    config = tmp_path / "stratumd.toml"
    config.write_text(_window_ending_soon(15))      # long enough for a daemon on a loaded host to start inside it
    d = DaemonProc(str(remote), data, root, "--config", str(config))
    try:
        first = git(work.path, "rev-parse", "HEAD")
        wait_for(lambda: _revision_status(d, first) == "queued", 15)
        assert not (root / "etc/motd").exists()
        window = d.call("windows")["gate"]
        assert window["blocked"] is True and "test freeze" in window["reason"]
        second = work.commit(_motd("two"))
        work.push()
        # The window ends by itself; the newest commit runs then, the older one is superseded.
        assert d.wait_run(second, 45)["status"] == "succeeded"
        assert (root / "etc/motd").read_text() == "two\n"
    finally:
        assert d.stop() == 0
    statuses = dict(index_rows(data, "SELECT id, status FROM revisions"))
    assert statuses[first] == "superseded" and statuses[second] == "applied"


def test_sighup_reloads_windows_and_a_broken_file_keeps_the_old_settings(
        pushed: tuple[WorkRepo, Path], tmp_path: Path) -> None:
    """SIGHUP applies a new deny window at once; a broken settings file is refused and the old ones stay."""
    work, remote = pushed
    data, root = tmp_path / "data", tmp_path / "root"
    config = tmp_path / "stratumd.toml"
    config.write_text("interval = 60\n")
    d = DaemonProc(str(remote), data, root, "--config", str(config))
    try:
        d.wait_run(git(work.path, "rev-parse", "HEAD"))
        config.write_text('[[windows]]\nkind = "deny"\nname = "always"\nschedule = "* * * * *"\nduration = "2m"\n')
        d.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: any(e.get("event") == "settings_reloaded" for e in d.log_events()), 15)
        second = work.commit(_motd("two"))
        work.push()
        wait_for(lambda: _revision_status(d, second) == "queued", 15)
        assert (root / "etc/motd").read_text() == "one\n"
        config.write_text("[[windows]\nbroken = ")
        d.proc.send_signal(signal.SIGHUP)
        failed = wait_for(lambda: [e for e in d.log_events() if e.get("event") == "reload_failed"], 15)
        assert str(config) in failed[0]["message"]
        assert d.call("windows")["gate"]["blocked"] is True           # the old (valid) settings still hold
        assert any(e["kind"] == "reload_failed" for e in d.call("events", limit=50)["events"])
        assert d.proc.poll() is None
    finally:
        assert d.stop() == 0


def _post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, object]]:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json", **headers},
                                 method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_github_webhook_triggers_a_fetch_and_a_forged_one_is_refused_and_audited(
        pushed: tuple[WorkRepo, Path], tmp_path: Path) -> None:
    """For a remote repo fetched hourly, a valid GitHub delivery makes the daemon fetch and apply at once; a
    forged signature gets 401 and an event, and a replayed delivery gets 409."""
    work, remote = pushed
    data, root = tmp_path / "data", tmp_path / "root"
    secret = tmp_path / "gh.secret"
    secret.write_text("s3cret-for-tests\n")
    os.chmod(secret, 0o600)
    config = tmp_path / "stratumd.toml"
    config.write_text(f'interval = 3600\n[webhooks.gh]\ntype = "github"\nsecret_file = "{secret}"\n'
                      f'branch = "main"\n')
    d = DaemonProc(f"file://{remote}", data, root, "--config", str(config))
    try:
        d.wait_run(git(work.path, "rev-parse", "HEAD"))
        second = work.commit(_motd("two"))
        work.push()
        url = f"http://127.0.0.1:{d.call('status')['status']['daemon']['http_port']}/hooks/gh"
        body = json.dumps({"ref": "refs/heads/main", "after": second}).encode()
        forged = "sha256=" + hmac.new(b"wrong", body, hashlib.sha256).hexdigest()
        code, _ = _post(url, body, {"X-GitHub-Event": "push", "X-GitHub-Delivery": "d-1",
                                    "X-Hub-Signature-256": forged})
        assert code == 401
        wait_for(lambda: any(e["kind"] == "webhook_rejected" for e in d.call("events", limit=50)["events"]), 10)
        assert not any(r["revision"] == second for r in d.runs())
        good = "sha256=" + hmac.new(b"s3cret-for-tests", body, hashlib.sha256).hexdigest()
        code, reply = _post(url, body, {"X-GitHub-Event": "push", "X-GitHub-Delivery": "d-2",
                                        "X-Hub-Signature-256": good})
        assert code == 202 and reply["accepted"] is True
        assert d.wait_run(second, 20)["status"] == "succeeded"
        assert (root / "etc/motd").read_text() == "two\n"
        code, _ = _post(url, body, {"X-GitHub-Event": "push", "X-GitHub-Delivery": "d-2",
                                    "X-Hub-Signature-256": good})
        assert code == 409
        assert "s3cret" not in d.log()
    finally:
        assert d.stop() == 0


def test_sigterm_mid_apply_finishes_the_running_action_and_starts_nothing_more(
        pushed: tuple[WorkRepo, Path], tmp_path: Path) -> None:
    """SIGTERM while an action runs: that action completes and is checkpointed `done`, its dependent never
    starts, the daemon exits 0; the next start rolls the open run back (compensation included), then applies
    the commit again in a new run, so a restart never loses it."""
    work, remote = pushed
    data, root = tmp_path / "data", tmp_path / "root"
    slow = infra_file(
        "    slow = { kind = 'command, run = \"touch started.txt && sleep 2 && echo ran > slow.txt\", "
        "creates = \"slow.txt\", compensate = \"rm -f slow.txt && echo undone > undone.txt\" },\n"
        "    after = { kind = 'file, path = \"after.txt\", content = \"x\\n\", depends_on = [\"slow\"] },")
    d = DaemonProc(str(remote), data, root)
    try:
        d.wait_run(git(work.path, "rev-parse", "HEAD"))
        second = work.commit({"infra/slow.ncl": slow})
        work.push()
        wait_for(lambda: (root / "started.txt").exists(), 20)
    finally:
        d.proc.send_signal(signal.SIGTERM)
        assert d.proc.wait(30) == 0
        d.stop()
    assert (root / "slow.txt").read_text() == "ran\n"
    assert not (root / "after.txt").exists()
    rows = index_rows(data, "SELECT a.action_id, a.status FROM actions a JOIN runs r ON a.run_id = r.id "
                            "WHERE r.revision = ?", [second])
    statuses = dict(rows)
    assert statuses.get("infra:slow") == "done" and "infra:after" not in statuses
    assert index_rows(data, "SELECT status FROM runs WHERE revision = ?", [second]) == [("running",)]
    assert any(e.get("event") == "run_interrupted" for e in d.log_events())
    again = DaemonProc(str(remote), data, root)
    try:
        def outcomes() -> list[str]:
            done = [r["status"] for r in reversed(again.runs()) if r["revision"] == second]
            return done if "succeeded" in done else []
        assert wait_for(outcomes, 30) == ["rolled_back", "succeeded"]
        assert (root / "undone.txt").read_text() == "undone\n"          # the compensation ran
        assert (root / "slow.txt").read_text() == "ran\n" and (root / "after.txt").exists()
    finally:
        assert again.stop() == 0

