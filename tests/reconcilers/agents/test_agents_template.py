"""The template's agents for a new user: `stratum init` in a fresh HOME, a real `stratumd` applying it, then the
commands a new user types. The devops agent runs the nightly drift report by hand, the disk-space check has
probed, the history shows both, and the LLM task (pointed at an OpenAI-compatible URL where nothing answers on
a fresh machine) fails with a clear message in its record: no traceback anywhere."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.proc import DaemonProc, cli_env, wait_for

LLM_PORT = 11434             # the template's provider URL (Ollama's default port)


def stratum(env: dict[str, str], *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """A real `stratum` process in the fresh HOME."""
    return subprocess.run([sys.executable, "-c", "from daemon.cli.main import main; main()", *args],
                          capture_output=True, text=True, env=env, timeout=300, check=False, cwd=cwd)


def history(env: dict[str, str], data: Path) -> list[dict[str, Any]]:
    out = stratum(env, "task", "history", "--data-dir", str(data), "--output", "json")
    return list(json.loads(out.stdout)) if out.returncode == 0 else []


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.slow
def test_the_template_team_runs_for_a_new_user(tmp_path: Path) -> None:
    """init -> stratumd -> task list, task run drift-report, check status, task run disk-triage, task history:
    each works, the command task succeeds, and the LLM task with no server fails with a readable error."""
    assert not _listening(LLM_PORT), "something answers on the template's LLM port: this test needs it free"
    home = tmp_path / "home"
    home.mkdir()
    env = {**cli_env(), "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
           "XDG_CACHE_HOME": str(home / ".cache"), "GIT_CONFIG_GLOBAL": str(home / ".gitconfig")}
    repo, data = tmp_path / "ops", tmp_path / "data"
    made = stratum(env, "init", str(repo))
    assert made.returncode == 0, made.stderr
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True, env=env).stdout.strip()
    daemon = DaemonProc(str(repo), data, tmp_path / "root", env=env)
    outputs: list[str] = []
    try:
        assert daemon.wait_run(head, 240)["status"] == "succeeded", daemon.log()
        listed = wait_for(lambda: (r := stratum(env, "task", "list", "--data-dir", str(data), "--output",
                                                "json")).returncode == 0 and json.loads(r.stdout), 90)
        assert {t["id"] for t in listed} >= {"drift-report", "disk-triage"}
        assert next(t for t in listed if t["id"] == "drift-report")["schedule"] == "0 3 * * *"

        ran = stratum(env, "task", "run", "drift-report", "--data-dir", str(data))
        outputs.append(ran.stdout + ran.stderr)
        assert ran.returncode == 0 and "queued drift-report" in ran.stdout, ran.stderr
        drift = wait_for(lambda: next((r for r in history(env, data) if r["task"] == "drift-report"), None), 120)
        assert (drift["outcome"], drift["agent"], drift["trigger"]) == ("succeeded", "devops", "manual"), drift

        checks = wait_for(lambda: (r := stratum(env, "check", "status", "--data-dir", str(data), "--output",
                                                "json")).returncode == 0 and json.loads(r.stdout), 60)
        disk = next(c for c in checks if c["check_id"] == "disk-space")
        assert disk["last_at"] and disk["message"]

        ran = stratum(env, "task", "run", "disk-triage", "--data-dir", str(data))
        outputs.append(ran.stdout + ran.stderr)
        assert ran.returncode == 0, ran.stderr
        llm = wait_for(lambda: next((r for r in history(env, data) if r["task"] == "disk-triage"), None), 120)
        assert llm["outcome"] == "failed" and llm["summary"] == "every provider failed", llm
        assert f"127.0.0.1:{LLM_PORT}" in llm["error"] and "could not connect" in llm["error"], llm["error"]

        shown = stratum(env, "task", "history", "--data-dir", str(data))
        outputs.append(shown.stdout + shown.stderr)
        assert shown.returncode == 0 and "drift-report" in shown.stdout and "disk-triage" in shown.stdout
        shown = stratum(env, "check", "status", "--data-dir", str(data))
        outputs.append(shown.stdout + shown.stderr)
        assert shown.returncode == 0 and "disk-space" in shown.stdout
    finally:
        assert daemon.stop() == 0, daemon.log()
    assert not any("Traceback" in o for o in [*outputs, daemon.log()]), daemon.log()[-3000:]
