"""Agent tasks in a real daemon: a commit with agents/ and tasks/ is applied, the agents service starts, a
manual run requested through the CLI while the daemon holds the agents' file runs and shows in the history;
a failed run queues the on_run_failed task; a later commit removing a cron task removes its job."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures import WorkRepo
from tests.proc import DaemonProc, cli_env, wait_for

TEAM = """{
  providers = { local = { kind = 'command } },
  agents = { ops = { role = "devops", providers = ["local"] } },
}
"""
TASKS = """{
  tasks = {
    hello = { title = "Hello", role = "devops", command = ["sh", "-c", "echo hello from $STRATUM_TASK"] },
    nightly = { title = "Nightly", role = "devops", command = ["true"],
                trigger = { kind = 'cron, schedule = "0 3 * * *" } },
    after-failure = { title = "After a failed run", role = "devops", trigger = { kind = 'on_run_failed },
                      command = ["sh", "-c", "echo run failed"] },
  },
}
"""
MORE = """{ tasks = { extra = { title = "Extra", role = "devops", command = ["true"] } } }
"""
FAILING = """{ resources = { boom = { kind = 'command, run = "exit 3" } } }
"""


def stratum(*args: str) -> subprocess.CompletedProcess[str]:
    """A real `stratum` process."""
    return subprocess.run([sys.executable, "-c", "from daemon.cli.main import main; main()", *args],
                          capture_output=True, text=True, env=cli_env(), timeout=180, check=False)


def status(data: Path) -> dict[str, object]:
    """The service's status snapshot."""
    path = data / "agents" / "status.json"
    return dict(json.loads(path.read_text())) if path.exists() else {}


@pytest.mark.slow
def test_tasks_run_in_the_daemon(tmp_path: Path) -> None:
    """Commit agents and tasks: the daemon schedules them, runs a requested task, reacts to a failed run, and
    drops the job of a removed cron task."""
    repo = WorkRepo(tmp_path / "repo")
    first = repo.commit({"agents/team.ncl": TEAM, "tasks/t.ncl": TASKS})
    data = tmp_path / "data"
    daemon = DaemonProc(str(repo.path), data, tmp_path / "root")
    try:
        assert daemon.wait_run(first, 120)["status"] == "succeeded", daemon.log()
        wait_for(lambda: {t["id"] for t in status(data).get("tasks", [])} == {"hello", "nightly", "after-failure"},
                 60)
        nightly = next(t for t in status(data)["tasks"] if t["id"] == "nightly")  # type: ignore[attr-defined]
        assert nightly["next_fire"] is not None
        out = stratum("task", "run", "hello", "--data-dir", str(data))
        assert out.returncode == 0 and "queued hello for the daemon" in out.stdout, out.stderr
        wait_for(lambda: any(r["task"] == "hello" and r["outcome"] == "succeeded"
                             for r in status(data).get("history", [])), 60)  # type: ignore[union-attr]
        row = next(r for r in status(data)["history"] if r["task"] == "hello")  # type: ignore[attr-defined]
        assert row["summary"] == "exit 0: hello from hello" and row["trigger"] == "manual"

        # A revision that fails to apply: its new task never comes in force (the old declarations stay).
        failed = repo.commit({"infra/boom.ncl": FAILING, "tasks/more.ncl": MORE})
        assert daemon.wait_run(failed, 120)["status"] in ("failed", "rolled_back")
        wait_for(lambda: any(r["task"] == "after-failure" and r["trigger"] == "on_run_failed"
                             for r in status(data).get("history", [])), 60)  # type: ignore[union-attr]
        assert "extra" not in {t["id"] for t in status(data)["tasks"]}  # type: ignore[attr-defined]

        gone = repo.commit({"infra/boom.ncl": None, "tasks/more.ncl": None, "tasks/t.ncl": TASKS.replace(
            "nightly = { title = \"Nightly\", role = \"devops\", command = [\"true\"],\n"
            "                trigger = { kind = 'cron, schedule = \"0 3 * * *\" } },\n", "")})
        assert daemon.wait_run(gone, 120)["status"] == "succeeded", daemon.log()
        wait_for(lambda: {t["id"] for t in status(data).get("tasks", [])} == {"hello", "after-failure"}, 60)
    finally:
        assert daemon.stop() == 0, daemon.log()
    # Restarted with no new commit: the revision in force is the applied one, and tasks run again.
    daemon = DaemonProc(str(repo.path), data, tmp_path / "root")
    try:
        (data / "agents" / "status.json").unlink()
        wait_for(lambda: {t["id"] for t in status(data).get("tasks", [])} == {"hello", "after-failure"}, 90)
        assert stratum("task", "run", "hello", "--data-dir", str(data)).returncode == 0
        wait_for(lambda: sum(r["task"] == "hello" for r in status(data).get("history", [])) == 2, 60)  # type: ignore[union-attr]
    finally:
        assert daemon.stop() == 0, daemon.log()
    out = stratum("task", "history", "--data-dir", str(data), "--output", "json")
    assert out.returncode == 0, out.stderr
    assert {r["task"] for r in json.loads(out.stdout)} >= {"hello", "after-failure"}
