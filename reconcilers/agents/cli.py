"""`stratum task`, `stratum agent`, `stratum check`: the agents' CLI verbs (plugin verbs, plugin.py).

Without a daemon on the data directory a verb opens `<data-dir>/agents.duckdb` itself (and `task run` runs the
task in this process). While the daemon holds that file (DuckDB allows one process), readers use the status
snapshot it rewrites every 2 s (`<data-dir>/agents/status.json`) and changes (approve, reject, cancel, run,
purge) are left as requests it applies within a second. Every verb takes `--output json`.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click

from reconcilers.agents.model import AgentsDesired
from reconcilers.agents.store import Store, StoreError
from reconcilers.errors import InputError, StratumError

F = TypeVar("F", bound=Callable[..., Any])


class NotFound(StratumError):
    """A task, run or agent the user named does not exist."""


def options(fn: F) -> F:
    """--repo, --data-dir and --output on every verb."""
    fn = click.option("--output", "-o", type=click.Choice(["text", "json"]), default="text",
                      help="output format")(fn)
    fn = click.option("--data-dir", default=None, type=click.Path(path_type=Path),
                      help="state directory (default: the one `stratum` uses for the repository)")(fn)
    return click.option("--repo", default=None,
                        help="repository path or URL (default: the current directory)")(fn)


def data_dir_of(repo: str | None, data_dir: Path | None) -> Path:
    """The data directory: given, $STATE_DIRECTORY, or the per-repository default every verb uses (asked of
    the kernel's VerbHost, which `stratum` puts in click's context object)."""
    import os

    if data_dir is not None:
        return data_dir
    if os.environ.get("STATE_DIRECTORY"):
        return Path(os.environ["STATE_DIRECTORY"].split(":")[0])
    ctx = click.get_current_context(silent=True)
    host = ctx.find_root().obj if ctx is not None else None
    if host is None or not hasattr(host, "open"):
        raise InputError("no data directory", hint="pass --data-dir DIR (or run the verb through `stratum`)")
    with host.open("agents", {"repo": repo, "data_dir": None, "config": None, "branch": None,
                              "root": None}) as env:
        return Path(env.data_dir)


@dataclass
class Access:
    """The agents' state: the DuckDB file (no daemon) or the daemon's status snapshot and request spool."""

    data_dir: Path
    store: Store | None
    status: dict[str, Any] | None

    @property
    def daemon(self) -> bool:
        """True when the daemon holds the file."""
        return self.store is None

    def team(self) -> AgentsDesired:
        """The declarations in force (direct access only)."""
        from reconcilers.agents.snapshot import load_team

        assert self.store is not None
        team = load_team(self.store)
        if team is None:
            raise NotFound("no agent declarations are known on this data directory yet",
                           where=str(self.data_dir), hint="start the daemon (or `stratum apply`) on a repository "
                           "with agents/ and tasks/")
        return team

    def view(self) -> dict[str, Any]:
        """The status data, from the file directly or the daemon's snapshot."""
        if self.status is not None:
            return self.status
        from reconcilers.agents.snapshot import status

        assert self.store is not None
        return status(self.store, self.team(), history=100_000)


@contextmanager
def access(repo: str | None, data_dir: Path | None) -> Iterator[Access]:
    """Open the agents' state for one verb."""
    from reconcilers.agents.service import status_path
    from reconcilers.agents.snapshot import DECLARED_FILE, take_declared

    folder = data_dir_of(repo, data_dir)
    path = folder / "agents.duckdb"
    if not path.exists() and not (folder / DECLARED_FILE).exists():
        raise NotFound("no agent tasks are known on this data directory", where=str(folder),
                       hint="declare agents/ and tasks/ in the repository, then `stratum apply` or start the "
                            "daemon (`stratumd`)")
    try:
        store = Store(path)
        take_declared(folder, store)      # what a `stratum apply` put in force since
    except StoreError:
        snap = status_path(folder)
        if not snap.exists():
            raise NotFound("the daemon holds the agents' state and has not written its status yet",
                           where=str(snap), hint="retry in a few seconds") from None
        yield Access(folder, None, json.loads(snap.read_text()))
        return
    try:
        yield Access(folder, store, None)
    finally:
        store.close()


def emit(output: str, data: Any, text: Callable[[Any], str]) -> None:
    """JSON or text."""
    if output == "json":
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        click.echo(text(data))


def when(ts: Any) -> str:
    """A unix time as readable UTC ("-" when none)."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(float(ts))) if ts else "-"


def table(rows: list[dict[str, Any]], cols: list[str]) -> str:
    """A plain aligned table."""
    if not rows:
        return "(none)"
    cells = [[str(r.get(c, "") if r.get(c) is not None else "-") for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(cols, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def listing(name: str, key: str, cols: list[str], doc: str) -> click.Command:
    """A read verb that shows one list of the status data as a table (or JSON)."""
    @options
    def cmd(repo: str | None, data_dir: Path | None, output: str) -> None:
        with access(repo, data_dir) as acc:
            rows = acc.view()[key]
        emit(output, rows, lambda d: table(d, cols))
    cmd.__doc__ = doc
    return click.command(name)(cmd)


def change(acc: Access, verb: str, target: str) -> dict[str, Any]:
    """Approve, reject or cancel: directly, or as a request for the daemon."""
    from reconcilers.agents.queue import DuckDBQueue
    from reconcilers.agents.service import submit_request

    if acc.store is None:
        submit_request(acc.data_dir, verb, target)
        return {"run": target, "verb": verb, "result": "requested", "by": "daemon"}
    q = DuckDBQueue(acc.store)
    ok = {"approve": q.approve, "reject": q.reject, "cancel": q.cancel}[verb](target)
    if not ok:
        state = q.state(target)
        raise NotFound(f"run {target} cannot be {verb}d" + (f": it is {state}" if state else ": no such run"),
                       hint="`stratum task pending` lists runs waiting for approval; `stratum task history` all")
    return {"run": target, "verb": verb, "result": "done", "state": q.state(target)}


# -- stratum task ---------------------------------------------------------------------------------------------
@click.group("task")
def task() -> None:
    """Agent tasks: list, run, history, approvals, purge.

    \b
    Examples:
      stratum task list
      stratum task run drift-report
      stratum task pending && stratum task approve <run id>
      stratum task history --task drift-report --output json
    """


@task.command("list")
@options
def task_list(repo: str | None, data_dir: Path | None, output: str) -> None:
    """The declared tasks with their triggers and next scheduled run."""
    with access(repo, data_dir) as acc:
        rows = acc.view()["tasks"]
    for r in rows:
        r["next"] = when(r.get("next_fire"))
    emit(output, rows, lambda d: table(d, ["id", "role", "trigger", "schedule", "kind", "approval", "next"]))


@task.command("run")
@click.argument("task_id")
@options
def task_run(task_id: str, repo: str | None, data_dir: Path | None, output: str) -> None:
    """Run a task (or pipeline) now: in this process without a daemon, else queued for the daemon."""
    with access(repo, data_dir) as acc:
        if acc.store is None:
            from reconcilers.agents.service import submit_request

            submit_request(acc.data_dir, "run", task_id)
            emit(output, {"task": task_id, "result": "requested", "by": "daemon"},
                 lambda d: f"queued {task_id} for the daemon; `stratum task history` shows it when done")
            return
        result = _run_here(acc, task_id, repo)
    emit(output, result, lambda d: f"{d['task']}: {d['outcome']} by {d['agent'] or '-'} - {d['summary']}")
    if result["outcome"] not in ("succeeded", "skipped"):
        sys.exit(1)


def _run_here(acc: Access, task_id: str, repo: str | None) -> dict[str, Any]:
    import os

    from reconcilers.agents.knowledge import context_for, tool_host
    from reconcilers.agents.plan_read import kernel_plan
    from reconcilers.agents.policy import RolePolicy
    from reconcilers.agents.service import AgentService

    assert acc.store is not None
    team = acc.team()
    if task_id not in team.tasks and task_id not in team.pipelines:
        raise NotFound(f"no task or pipeline {task_id!r}", hint="`stratum task list` shows the declared tasks")
    acc.store.close()
    # plan.read and plan() as in the daemon (the kernel's `stratum plan`); no secrets port here: no vault.read.
    stratum = Path(sys.executable).with_name("stratum")
    plan = kernel_plan(str(stratum), repo or os.getcwd(), acc.data_dir) if stratum.exists() else None
    svc = AgentService(acc.data_dir, start_threads=False,
                       tools=tool_host(None, RolePolicy(lambda: team.policies).authorize, plan),
                       context=context_for(None, plan))
    try:
        svc.team, svc.runner.team = team, team
        svc.worker.roles = tuple(sorted({a.role for a in team.agents.values()}))
        if task_id in team.pipelines:
            raise InputError(f"{task_id} is a pipeline: pipelines run in the daemon",
                             hint="start `stratumd`, then `stratum task run` queues it there")
        t = team.tasks[task_id]
        mid = svc.enqueue_task(t, "manual", {})
        if t.approval:
            return {"task": task_id, "run": mid, "outcome": "awaiting_approval", "agent": "",
                    "summary": f"waits for `stratum task approve {mid}`"}
        svc.worker.drain()
        rows = svc.store.dicts("SELECT * FROM executions WHERE message = ? ORDER BY started DESC LIMIT 1", [mid])
        if not rows:
            return {"task": task_id, "run": mid, "outcome": str(svc.queue.state(mid)), "agent": "",
                    "summary": "not run"}
        return {**rows[0], "run": mid}
    finally:
        svc.close()
        acc.store = Store(acc.data_dir / "agents.duckdb")


@task.command("history")
@click.option("--task", "task_id", default=None, help="only this task")
@click.option("--limit", default=20, show_default=True)
@options
def task_history(task_id: str | None, limit: int, repo: str | None, data_dir: Path | None, output: str) -> None:
    """Executions, newest first: trigger, agent, provider, tokens, cost, duration, outcome."""
    with access(repo, data_dir) as acc:
        rows = [r for r in acc.view()["history"] if task_id is None or r["task"] == task_id][:limit]
    for r in rows:
        r["at"], r["seconds"] = when(r["started"]), round(float(r["finished"] or 0) - float(r["started"] or 0), 2)
    emit(output, rows, lambda d: table(d, ["at", "task", "trigger", "agent", "provider", "outcome", "tokens_in",
                                           "tokens_out", "cost", "seconds", "summary"]))


def _changer(verb: str) -> click.Command:
    @click.argument("run_id")
    @options
    def cmd(run_id: str, repo: str | None, data_dir: Path | None, output: str) -> None:
        with access(repo, data_dir) as acc:
            result = change(acc, verb, run_id)
        emit(output, result, lambda d: f"{verb} {run_id}: {d['result']}" +
             (" (the daemon applies it within a second)" if d.get("by") == "daemon" else ""))
    cmd.__doc__ = {"approve": "Let a run waiting for approval go.", "reject": "Refuse a run waiting for approval.",
                   "cancel": "Cancel a run that has not finished."}[verb]
    return click.command(verb)(cmd)


for _verb in ("approve", "reject", "cancel"):
    task.add_command(_changer(_verb))
task.add_command(listing("pending", "pending", ["id", "task", "role", "trigger"], "Runs waiting for approval."))


@task.command("purge")
@click.option("--older-than", "days", type=float, default=None, help="days (default: agents.retention_days)")
@click.option("--keep", type=int, default=None, help="newest records kept (default: agents.retention_count)")
@options
def task_purge(days: float | None, keep: int | None, repo: str | None, data_dir: Path | None, output: str) -> None:
    """Delete execution records by age and count now."""
    from reconcilers.agents.retention import purge
    from reconcilers.agents.service import submit_request

    with access(repo, data_dir) as acc:
        if acc.store is None:
            d, k = days if days is not None else 90, keep if keep is not None else 100_000
            submit_request(acc.data_dir, "purge", f"{d}:{k}")
            emit(output, {"result": "requested", "by": "daemon"}, lambda _: "purge requested from the daemon")
            return
        settings = acc.team().settings
        gone = purge(acc.store, days if days is not None else settings.retention_days,
                     keep if keep is not None else settings.retention_count)
    emit(output, {"deleted": gone}, lambda d: f"deleted {d['deleted']} execution records")


# -- stratum agent --------------------------------------------------------------------------------------------
@click.group("agent")
def agent() -> None:
    """Agents: list, why one was chosen, budgets.

    \b
    Examples:
      stratum agent list
      stratum agent profile ops-1
      stratum agent budget --output json
    """


agent.add_command(listing("list", "agents", ["id", "role", "providers", "max_concurrency", "tools"],
                          "The declared agents: role, provider chain, concurrency, tools."))
agent.add_command(listing("budget", "budgets", ["role", "month", "monthly_cap", "week", "weekly_cap", "used", "over"],
                          "Spend per role this month and week against its caps."))


@agent.command("profile")
@click.argument("agent_id")
@options
def agent_profile(agent_id: str, repo: str | None, data_dir: Path | None, output: str) -> None:
    """Why an agent won (or lost): its score parts per task type and its recent decisions."""
    with access(repo, data_dir) as acc:
        view = acc.view()
        me = next((a for a in view["agents"] if a["id"] == agent_id), None)
        if me is None:
            raise NotFound(f"no agent {agent_id!r}", hint="`stratum agent list` shows the declared agents")
        scores = _scores(acc, me["role"]) if acc.store is not None else {}
        decisions = [d for d in view["assignments"] if agent_id in str(d.get("explain", ""))][:10]
    runs = [r for r in view["history"] if r.get("agent") == agent_id]
    data = {"agent": me, "executions": len(runs), "succeeded": sum(r["outcome"] == "succeeded" for r in runs),
            "scores": scores, "decisions": decisions}

    def text(d: dict[str, Any]) -> str:
        lines = [f"agent {agent_id} ({me['role']}): {d['executions']} executions, {d['succeeded']} succeeded"]
        for ttype, explain in d["scores"].items():
            lines += [f"task type {ttype}:", *("  " + x for x in explain.splitlines())]
        for dec in d["decisions"]:
            lines += [f"decision for {dec['task']} at {when(dec['at_ts'])}:", *("  " + x for x in
                                                                                  dec["explain"].splitlines())]
        return "\n".join(lines)

    emit(output, data, text)


def _scores(acc: Access, role: str) -> dict[str, str]:
    """The decision each task type of `role` would get now, explained."""
    from reconcilers.agents.queue import DuckDBQueue
    from reconcilers.agents.runner import Runner

    assert acc.store is not None
    team = acc.team()
    runner = Runner(acc.store, DuckDBQueue(acc.store), team, acc.data_dir / "agents" / "work")
    types = sorted({t.task_type for t in team.tasks.values() if t.role == role})
    return {t: runner.decide(role, t, team.agents_for(role)).explain() for t in types}


# -- stratum check --------------------------------------------------------------------------------------------
@click.group("check")
def check() -> None:
    """Monitor checks: list and status.

    \b
    Examples:
      stratum check list
      stratum check status --output json
    """


check.add_command(listing("list", "checks", ["id", "kind", "interval", "failures"], "The declared checks."))


@check.command("status")
@options
def check_status(repo: str | None, data_dir: Path | None, output: str) -> None:
    """Each check's state: healthy or failing, consecutive counts, the last probe."""
    with access(repo, data_dir) as acc:
        rows = acc.view()["check_states"]
    for r in rows:
        r["state"], r["last"] = ("healthy" if r["healthy"] else "FAILING"), when(r["last_at"])
    emit(output, rows, lambda d: table(d, ["check_id", "state", "failures", "successes", "last", "message"]))
