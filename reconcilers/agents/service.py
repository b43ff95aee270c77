"""The agents service: what runs tasks inside the daemon (or a one-off CLI run).

1. start     open `<data-dir>/agents.duckdb`, the queue, the runner, a worker thread and the schedule
2. update    each admitted revision: the runner's team and the schedule follow the declarations; tasks
             and pipelines whose `on_commit` globs match the changed paths are queued
3. trigger   on_run_failed, on_drift, webhook, manual: queue the tasks and pipelines of that trigger
4. fire      a schedule job: a cron task or pipeline is queued; a check is probed and, on a transition to
             failing, its `on_check` tasks and pipelines are queued
5. requests  CLI verbs while the daemon holds the DuckDB file drop JSON requests in `<data-dir>/agents/
             requests/` (approve, reject, cancel, run); the service applies them within a second
6. records   with an executions branch (`record_executions`), every recorded execution's knowledge node is
             committed there in batches (node_writer.py), every 2 s and when the service stops
7. remote    with the NATS queue, the execution records remote workers publish (remote.py) are recorded here
             once each (by execution id) with their node, metrics and budget spend, as local ones
Every entry point logs and swallows its own errors: a bad task never stops the scheduler or the worker.
"""

from __future__ import annotations

import fnmatch
import json
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import httpx
import structlog

from reconcilers.agents.checks import CheckStates, probe
from reconcilers.agents.execution_node import pipeline_node
from reconcilers.agents.model import AgentsDesired, Pipeline, Task, Trigger
from reconcilers.agents.natsqueue import NatsQueue
from reconcilers.agents.node_writer import Commit, NodeWriter
from reconcilers.agents.pipeline import PipelineRun, run_pipeline
from reconcilers.agents.prompts import Context
from reconcilers.agents.queue import DuckDBQueue, Message
from reconcilers.agents.remote import outcome_from
from reconcilers.agents.retention import purge
from reconcilers.agents.runner import Outcome, Runner
from reconcilers.agents.schedule import Schedule
from reconcilers.agents.snapshot import save_team, status, team_json, write_status
from reconcilers.agents.store import Store
from reconcilers.agents.tools import ToolHost
from reconcilers.agents.worker import Worker

log = structlog.get_logger("stratum.agents")
REQUEST_VERBS = ("approve", "reject", "cancel", "run", "purge")


def requests_dir(data_dir: Path) -> Path:
    """Where CLI verbs leave requests for a running service."""
    return data_dir / "agents" / "requests"


def private_dir(path: Path) -> Path:
    """A folder only the daemon's user may enter (0700), made if missing and tightened if it was not."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o077:
        path.chmod(0o700)
    return path


def submit_request(data_dir: Path, verb: str, target: str, by: str = "") -> Path:
    """Leave a request for the service (written whole, then renamed: the service never reads half a file).

    Why files and not the control socket: a plugin cannot add verbs to the kernel's control API, and the agents'
    DuckDB file has one writer process (the daemon's). Who may ask is who may write in `<data-dir>/agents/`
    (0700: the daemon's user, as for the control socket in the data directory)."""
    private_dir(data_dir / "agents")
    folder = private_dir(requests_dir(data_dir))
    name = f"{time.time():.6f}-{uuid.uuid4().hex[:8]}.json"
    tmp = folder / f".{name}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(json.dumps({"verb": verb, "target": target, "by": by}))
    os.replace(tmp, folder / name)
    return folder / name


def status_path(data_dir: Path) -> Path:
    """The status snapshot the running service keeps for readers."""
    return data_dir / "agents" / "status.json"


def matches(paths: Iterable[str], globs: Iterable[str]) -> bool:
    """Any path matching any glob (`*` and `**` both cross `/`)."""
    pats = [g.replace("**", "*") for g in globs]
    return any(fnmatch.fnmatchcase(p, g) for p in paths for g in pats)


class AgentService:
    """Queue, runner, worker, schedule and checks over one data directory."""

    def __init__(self, data_dir: Path, *, events: Callable[[str, str], None] | None = None,
                 secrets: Callable[[str], str] | None = None, tools: ToolHost | None = None,
                 context: Callable[[Message], Context] | None = None, roles: Iterable[str] | None = None,
                 start_threads: bool = True, http: httpx.Client | None = None,
                 queue_url: str = "",
                 drift_source: Callable[[float], list[tuple[float, str, str, str]]] | None = None) -> None:
        self.data_dir = data_dir
        private_dir(data_dir / "agents")                    # work dir, requests, status: the daemon's user only
        self.store = Store(data_dir / "agents.duckdb")
        # The embedded queue by default; NATS JetStream when the host names a server (the repo chose 'nats).
        self.queue: DuckDBQueue | NatsQueue = NatsQueue(queue_url) if queue_url else DuckDBQueue(self.store)
        self._own_http = http is None
        self.http = http or httpx.Client()
        self.team = AgentsDesired()
        self._events = events or (lambda kind, message: None)
        self.runner = Runner(self.store, self.queue, self.team, data_dir / "agents" / "work", http=self.http,
                             secrets=secrets, tools=tools or ToolHost(), events=self._events,
                             webhook=self._webhook)
        if context is not None:
            self.runner.context = context
        stratum = Path(sys.executable).with_name("stratum")
        self.runner.base_env = {"STRATUM_DATA_DIR": str(data_dir),
                                **({"STRATUM_BIN": str(stratum)} if stratum.exists() else {})}
        self.worker = Worker(self.queue, self.runner, tuple(roles or ()), parallel=2)
        self.checks = CheckStates(self.store)
        self.schedule = Schedule(self.store, self.fire, start=start_threads)
        self.pipelines: list[PipelineRun] = []
        # (ts, reconciler, subject, message) of drift events newer than a time: the daemon's drift checks.
        self.drift_source = drift_source
        self._drift_seen = time.time()          # drift found before this service started is not news
        # Called with (path, markdown, run) of each finished pipeline's execution node (the git writer).
        self.on_pipeline: Callable[[str, str, PipelineRun], None] | None = None
        self.nodes: NodeWriter | None = None           # task execution nodes (record_executions)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        if start_threads:
            loops = [(self._serve, "agents-worker"), (self._requests_loop, "agents-requests")]
            if isinstance(self.queue, NatsQueue):
                loops.append((self._imports_loop, "agents-executions"))
            for target, name in loops:
                t = threading.Thread(target=target, name=name, daemon=True)
                t.start()
                self._threads.append(t)

    def record_executions(self, commit: Commit) -> NodeWriter:
        """Commit an execution node for every recorded task execution with `commit(files, message)` (the git
        writer bound to the executions branch), in batches."""
        self.nodes = NodeWriter(self.store, commit, keep=self.team.settings.retention_count)
        self.runner.recorded = self._execution_node
        return self.nodes

    def _execution_node(self, out: Outcome) -> None:
        if self.nodes is not None:
            self.nodes.add(out, self.team.revision)

    # -- 2. each revision ----------------------------------------------------------------------------------
    def update(self, desired: AgentsDesired, changed: Iterable[str] = ()) -> None:
        """The declarations in force from now on; on_commit triggers for the changed paths."""
        self.team = desired
        self.runner.team = desired
        if self.nodes is not None:
            self.nodes.keep = desired.settings.retention_count
        save_team(self.store, desired)
        self.worker.visibility = desired.settings.visibility
        if isinstance(self.queue, NatsQueue):
            self.queue.visibility = desired.settings.visibility
            self.queue.put_team(team_json(desired))         # remote workers read the declarations from here
        purge(self.store, desired.settings.retention_days, desired.settings.retention_count)
        if not self.worker.roles or set(self.worker.roles) != {a.role for a in desired.agents.values()}:
            self.worker.roles = tuple(sorted({a.role for a in desired.agents.values()}))
        change = self.schedule.reconcile(desired)
        if change.added or change.changed or change.removed:
            self._events("schedule", f"jobs added {list(change.added)}, changed {list(change.changed)}, "
                                     f"removed {list(change.removed)}")
        paths = list(changed)
        if paths:
            self.trigger("on_commit", {"paths": paths[:200]},
                         match=lambda t: matches(paths, t.paths))
        self.write_status()

    def write_status(self) -> None:
        """Rewrite the status snapshot readers use while this process holds the DuckDB file."""
        write_status(status_path(self.data_dir), status(self.store, self.team, dict(self.schedule.next_fires()),
                                                        pending=self.queue.pending()))

    # -- 3. triggers -------------------------------------------------------------------------------------------
    def trigger(self, kind: str, inputs: Mapping[str, Any],
                match: Callable[[Trigger], bool] = lambda _t: True) -> list[str]:
        """Queue every task (and start every pipeline) whose trigger is `kind` and matches; their run ids."""
        out: list[str] = []
        for task in self.team.tasks.values():
            if task.trigger.kind == kind and match(task.trigger):
                out.append(self.enqueue_task(task, kind, inputs))
        for pl in self.team.pipelines.values():
            if pl.trigger.kind == kind and match(pl.trigger):
                out.append(self.start_pipeline(pl, kind, inputs))
        return out

    def enqueue_task(self, task: Task, trigger: str, inputs: Mapping[str, Any]) -> str:
        """Queue one run of `task` with `inputs`."""
        spec = {**task.spec(), "inputs": dict(inputs)}
        return self.queue.enqueue(task.role, spec, trigger=trigger, idem_key=task.idempotency_key,
                                  retries=task.retries, backoff=task.backoff, approval=task.approval)

    def start_pipeline(self, pl: Pipeline, trigger: str, inputs: Mapping[str, Any],
                       wait: bool = False) -> str:
        """Run a pipeline on its own thread (or here, when `wait`); an id for the log."""
        pid = f"pipeline-{uuid.uuid4().hex[:12]}"
        team = self.team

        def go() -> None:
            started = time.time()
            try:
                result = run_pipeline(pl, team, lambda t, trig, inp: self.enqueue_task(t, trig, inp), self.queue,
                                      {**inputs, "trigger": trigger})
                if self.on_pipeline is not None:
                    path, text = pipeline_node(result, pid, team.revision, started, time.time(),
                                               {**inputs, "trigger": trigger})
                    self.on_pipeline(path, text, result)
            except Exception:
                log.exception("agents.pipeline_crashed", pipeline=pl.id)
                return
            self.pipelines.append(result)
            self._events("pipeline", f"pipeline {pl.id} {result.outcome}: steps "
                                     f"{[(s.step, s.state) for s in result.steps]}")

        if wait:
            go()
        else:
            threading.Thread(target=go, name=pid, daemon=True).start()
        return pid

    def poll_drift(self) -> list[str]:
        """Queue the on_drift tasks once for the drift events recorded since the last poll; their run ids."""
        if self.drift_source is None:
            return []
        rows = self.drift_source(self._drift_seen)
        if not rows:
            return []
        self._drift_seen = max(float(r[0]) for r in rows)
        found = [{"reconciler": r[1], "subject": r[2], "message": r[3][:500]} for r in rows[:50]]
        return self.trigger("on_drift", {"drift": found, "count": len(rows)})

    # -- 4. schedule fires ---------------------------------------------------------------------------------
    def fire(self, job_id: str, scheduled: float) -> None:
        """A schedule job fired (APScheduler's thread, or catch-up at start)."""
        kind, _, item = job_id.partition(":")
        try:
            if kind == "task" and item in self.team.tasks:
                self.enqueue_task(self.team.tasks[item], "cron", {"scheduled": scheduled})
            elif kind == "pipeline" and item in self.team.pipelines:
                self.start_pipeline(self.team.pipelines[item], "cron", {"scheduled": scheduled})
            elif kind == "check" and item in self.team.checks:
                self.run_check(item)
        except Exception:
            log.exception("agents.job_failed", job=job_id)

    def run_check(self, check_id: str) -> str:
        """Probe one check; on a transition to failing, queue its on_check tasks. The transition ("" if none)."""
        check = self.team.checks[check_id]
        ok, message = probe(check, self.http, self.data_dir / "agents" / "work")
        transition = self.checks.observe(check, ok, message)
        if transition:
            self._events("check", f"check {check_id} {transition}: {message}")
        if transition == "failing":
            self.trigger("on_check", {"check": check_id, "message": message, "kind": check.kind,
                                      "target": check.url or f"{check.host}:{check.port}"},
                         match=lambda t: t.check == check_id)
        return transition

    # -- 5. requests from the CLI ----------------------------------------------------------------------------
    def process_requests(self) -> int:
        """Apply the requests CLI verbs left; how many."""
        folder = requests_dir(self.data_dir)
        done = 0
        for path in sorted(folder.glob("[0-9]*.json")) if folder.is_dir() else ():
            try:
                req = json.loads(path.read_text())
                verb, target = str(req["verb"]), str(req["target"])
                if req.get("by"):
                    self._events("request", f"{verb} {target} by {req['by']}")
                if verb == "approve":
                    self.queue.approve(target)
                elif verb == "reject":
                    self.queue.reject(target)
                elif verb == "cancel":
                    self.queue.cancel(target)
                elif verb == "run" and target in self.team.tasks:
                    self.enqueue_task(self.team.tasks[target], "manual", {})
                elif verb == "run" and target in self.team.pipelines:
                    self.start_pipeline(self.team.pipelines[target], "manual", {})
                elif verb == "purge":
                    days, _, keep = target.partition(":")
                    purge(self.store, float(days), int(keep))
            except (OSError, ValueError, KeyError) as err:
                log.warning("agents.bad_request", file=path.name, error=str(err))
            path.unlink(missing_ok=True)
            done += 1
        return done

    def _requests_loop(self) -> None:
        beat = 0
        while not self._stop.wait(0.5):
            beat += 1
            try:
                self.process_requests()
                if beat % 4 == 0:           # every 2 s: what readers see lags the queue by at most that
                    self.write_status()
                    self.poll_drift()
                    if self.nodes is not None:
                        self.nodes.flush()
            except Exception:
                log.exception("agents.requests_failed")

    # -- 7. records of remote workers ---------------------------------------------------------------------------
    def import_executions(self, limit: int = 100, timeout: float = 1.0) -> tuple[int, int]:
        """Record the executions remote workers published (NATS queue only): (records read, new ones). A copy
        of a record already here is acked and changes nothing; a record that cannot be read is dropped (logged);
        one this file could not take stays unacked and comes again."""
        if not isinstance(self.queue, NatsQueue):
            return 0, 0
        read = new = 0
        for data, handle in self.queue.fetch_executions(limit, timeout):
            read += 1
            try:
                out = outcome_from(json.loads(data))
            except ValueError as err:               # JSONDecodeError is a ValueError
                log.warning("agents.bad_execution_record", error=str(err)[:300])
                self.queue.settle_execution(handle, keep=False)
                continue
            new += self.runner.adopt(out)
            self.queue.settle_execution(handle, keep=True)
        return read, new

    def _imports_loop(self) -> None:
        while not self._stop.is_set():
            try:
                if not self.import_executions(timeout=1.0)[0]:
                    self._stop.wait(0.5)
            except Exception:
                log.exception("agents.execution_import_failed")
                self._stop.wait(5.0)

    def _serve(self) -> None:
        try:
            self.worker.serve(self._stop, poll=0.2)
        except Exception:
            log.exception("agents.worker_crashed")

    def _webhook(self, url: str, body: dict[str, Any]) -> None:
        try:
            self.http.post(url, json=body, timeout=10)
        except httpx.HTTPError as err:
            log.warning("agents.webhook_failed", url=url.split("?")[0], error=type(err).__name__)

    def close(self) -> None:
        """Stop the threads and the schedule, close the file."""
        self._stop.set()
        self.schedule.close()
        for t in self._threads:
            t.join(10)
        if self.nodes is not None:
            self.nodes.flush()              # the last runs' nodes, before the file closes
        if isinstance(self.queue, NatsQueue):
            self.queue.close()
        self.runner.close()
        if self._own_http:
            self.http.close()
        self.store.close()
