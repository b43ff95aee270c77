"""The template's tasks for a new user who has not started the daemon: `stratum init`, `stratum apply`, then
`stratum task list` and `task run drift-report` from the repository, in a fresh HOME. Before, `task list` said "no
agent tasks have run on this data directory" (a one-shot apply starts no agents service, so no agents.duckdb),
and the drift report's command (`stratum drift --data-dir "$STRATUM_DATA_DIR"`, run from the task's work
directory) failed with ". is not a git repository": `--data-dir` alone now means the repository that data
directory belongs to. A later apply's declarations replace the earlier ones in the listing."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.proc import cli_env
from tests.reconcilers.agents.test_agents_template import stratum


def _env(home: Path) -> dict[str, str]:
    home.mkdir()
    return {**cli_env(), "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
            "XDG_CACHE_HOME": str(home / ".cache"), "XDG_STATE_HOME": str(home / ".local" / "state"),
            "GIT_CONFIG_GLOBAL": str(home / ".gitconfig")}


def test_apply_then_task_list_and_run_without_a_daemon(tmp_path: Path) -> None:
    env = _env(tmp_path / "home")
    repo = tmp_path / "ops"
    assert stratum(env, "init", str(repo)).returncode == 0
    applied = stratum(env, "apply", cwd=repo)
    assert applied.returncode == 0, applied.stderr
    listed = stratum(env, "task", "list", "--output", "json", cwd=repo)
    assert listed.returncode == 0, listed.stderr
    assert {t["id"] for t in json.loads(listed.stdout)} >= {"drift-report", "disk-triage"}
    ran = stratum(env, "task", "run", "drift-report", "--output", "json", cwd=repo)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert json.loads(ran.stdout)["outcome"] == "succeeded"

    # A new task committed and applied shows up: the store takes the newer declarations.
    tasks = repo / "tasks" / "extra.ncl"
    tasks.write_text('{ tasks = { uptime = { title = "Uptime", role = "devops", trigger = { kind = \'manual }, '
                     'command = ["true"] } } }\n')
    subprocess.run(["git", "-C", str(repo), "add", "-A"], check=True, env=env)
    subprocess.run(["git", "-C", str(repo), "commit", "-qm", "uptime task"], check=True, env=env)
    assert stratum(env, "apply", cwd=repo).returncode == 0
    again = stratum(env, "task", "list", "--output", "json", cwd=repo)
    assert "uptime" in {t["id"] for t in json.loads(again.stdout)}, again.stdout + again.stderr


def test_data_dir_alone_outside_a_repository_means_its_repository(tmp_path: Path) -> None:
    """`stratum drift --data-dir DD` from a directory that is no repository works on DD's repository."""
    env = _env(tmp_path / "home")
    repo, data = tmp_path / "ops", tmp_path / "data"
    assert stratum(env, "init", str(repo)).returncode == 0
    assert stratum(env, "apply", "--data-dir", str(data), cwd=repo).returncode == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    drift = stratum(env, "drift", "--data-dir", str(data), "--output", "json", cwd=elsewhere)
    assert drift.returncode == 0, drift.stderr
    assert json.loads(drift.stdout) == []
