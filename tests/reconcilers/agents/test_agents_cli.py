"""`stratum task | agent | check` with and without a daemon holding the agents' DuckDB file: listing,
running, history, approvals, purge, profiles, budgets and checks, all with `--output json`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import MappingProxyType

from click.testing import CliRunner

from daemon.cli.main import cli
from reconcilers.agents.model import Agent, AgentsDesired, Budget, Check, Provider, Task, Trigger
from reconcilers.agents.queue import AWAITING, DuckDBQueue
from reconcilers.agents.service import AgentService
from reconcilers.agents.store import Store
from tests.proc import cli_env

STRATUM = [sys.executable, "-c", "from daemon.cli.main import main; main()"]   # this checkout's CLI


def seed(data: Path) -> None:
    """A data dir where the service has seen a devops team (as after the daemon applied a revision)."""
    svc = AgentService(data, start_threads=False)
    try:
        svc.update(AgentsDesired(
            providers=MappingProxyType({"local": Provider("local", "command")}),
            agents=MappingProxyType({"ops-1": Agent("ops-1", "devops", ("local",)),
                                     "ops-2": Agent("ops-2", "devops", ("local",))}),
            budgets=MappingProxyType({"devops": Budget("devops", monthly=20)}),
            tasks=MappingProxyType({
                "hello": Task("hello", "Hello", "devops", command=(sys.executable, "-c", "print('hi there')")),
                "gated": Task("gated", "Gated", "devops", command=("true",), approval=True),
                "nightly": Task("nightly", "Nightly", "devops", Trigger("cron", "0 3 * * *"), command=("true",))}),
            checks=MappingProxyType({"disk": Check("disk", "command", command=("true",))})))
    finally:
        svc.close()


def stratum(*args: str) -> tuple[int, str]:
    """Run a verb in this process; (exit code, output)."""
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


def test_list_run_and_history_without_a_daemon(tmp_path: Path) -> None:
    """Tasks are listed with their next fire; `task run` runs here; history and profile show it."""
    data = tmp_path / "data"
    seed(data)
    code, out = stratum("task", "list", "--data-dir", str(data), "--output", "json")
    assert code == 0, out
    assert {t["id"]: t["trigger"] for t in json.loads(out)} == {"hello": "manual", "gated": "manual",
                                                                 "nightly": "cron"}
    code, out = stratum("task", "run", "hello", "--data-dir", str(data))
    assert code == 0 and "hello: succeeded by ops-1 - exit 0: hi there" in out, out
    code, out = stratum("task", "history", "--data-dir", str(data), "--output", "json")
    rows = json.loads(out)
    assert [(r["task"], r["outcome"], r["trigger"]) for r in rows] == [("hello", "succeeded", "manual")]
    code, out = stratum("agent", "profile", "ops-1", "--data-dir", str(data))
    assert code == 0 and "agent ops-1 (devops): 1 executions, 1 succeeded" in out, out
    assert "winner: ops-1 (by score)" in out
    code, out = stratum("agent", "budget", "--data-dir", str(data), "--output", "json")
    assert json.loads(out)[0]["monthly_cap"] == 20
    code, out = stratum("check", "list", "--data-dir", str(data), "--output", "json")
    assert json.loads(out) == [{"id": "disk", "kind": "command", "interval": 60.0, "failures": 3}]
    code, out = stratum("task", "purge", "--older-than", "0", "--data-dir", str(data), "--output", "json")
    assert json.loads(out) == {"deleted": 1}


def test_approvals_without_a_daemon(tmp_path: Path) -> None:
    """An approval task waits in `pending` until approved; approving twice says why it cannot."""
    data = tmp_path / "data"
    seed(data)
    code, out = stratum("task", "run", "gated", "--data-dir", str(data), "--output", "json")
    run = json.loads(out)["run"]
    assert json.loads(out)["outcome"] == "awaiting_approval"
    code, out = stratum("task", "pending", "--data-dir", str(data), "--output", "json")
    assert [r["id"] for r in json.loads(out)] == [run]
    assert stratum("task", "approve", run, "--data-dir", str(data))[0] == 0
    code, out = stratum("task", "approve", run, "--data-dir", str(data))
    assert code == 1 and f"run {run} cannot be approved: it is ready" in out


def test_unknown_things_are_clear_errors(tmp_path: Path) -> None:
    """An unknown task or agent, or a data dir with no agents, is one error line with a hint, exit 1."""
    code, out = stratum("task", "list", "--data-dir", str(tmp_path / "empty"))
    assert code == 1 and "no agent tasks are known on this data directory" in out and "Traceback" not in out
    data = tmp_path / "data"
    seed(data)
    code, out = stratum("task", "run", "nope", "--data-dir", str(data))
    assert code == 1 and "no task or pipeline 'nope'" in out and "hint:" in out
    code, out = stratum("agent", "profile", "ghost", "--data-dir", str(data))
    assert code == 1 and "no agent 'ghost'" in out


def test_while_the_daemon_holds_the_file_readers_use_its_snapshot_and_changes_are_requests(tmp_path: Path) -> None:
    """Another process (standing for the daemon) holds agents.duckdb: a real `stratum` process reads the status
    snapshot and leaves an approve request that the service then applies."""
    data = tmp_path / "data"
    seed(data)
    svc = AgentService(data, start_threads=False)          # this process now holds the DuckDB file
    try:
        from reconcilers.agents.snapshot import load_team
        team = load_team(svc.store)
        assert team is not None
        svc.update(team)
        run = svc.enqueue_task(team.tasks["gated"], "manual", {})
        svc.write_status()
        proc = subprocess.run([*STRATUM, "task", "pending", "--data-dir", str(data), "--output", "json"],
                              capture_output=True, text=True, check=False, timeout=120, env=cli_env())
        assert proc.returncode == 0, proc.stderr
        assert [r["id"] for r in json.loads(proc.stdout)] == [run]
        proc = subprocess.run([*STRATUM, "task", "approve", run, "--data-dir", str(data)],
                              capture_output=True, text=True, check=False, timeout=120, env=cli_env())
        assert proc.returncode == 0 and "the daemon applies it" in proc.stdout, proc.stderr
        assert svc.queue.state(run) == AWAITING
        assert svc.process_requests() == 1
        assert svc.queue.state(run) == "ready"
    finally:
        svc.close()
    assert DuckDBQueue(Store(data / "agents.duckdb")).state(run) == "ready"
