"""AgentsReconciler: the daemon's view of `agents/` and `tasks/`.

1. configure  the `agents` section of stratum.ncl (queue, minimum cron interval, retention)
2. load       evaluate agents/**/*.ncl and tasks/**/*.ncl with nickel/agents.ncl (the daemon's evaluator)
3. validate   roles, agents per role, providers, cron, budgets, templates, pipelines (validate.py)
4. index      the admitted revision's declarations are staged; when its run succeeds (on_run_finished) they
              come in force (`active`): the agents service (service.py; started then in the daemon, never in
              a one-shot CLI process) reconciles its schedule from them and queues the `on_commit` tasks
              whose globs match the changed files. A rolled-back revision never schedules anything.
5. plan       nothing to apply on a commit: tasks run from the queue, not as a run's actions
6. after      a failed or rolled-back run queues the `on_run_failed` tasks
The HTTP interface (/agents): POST /agents/webhook/<task or pipeline id> queues a `webhook` one, GET
/agents/metrics is the Prometheus text of agent executions.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from reconcilers.agents.load import CONTRACT, FOLDERS, load_agents
from reconcilers.agents.model import NAME, AgentsDesired, AgentSettings
from reconcilers.base import PolicyResource, Problem, ReconcilerEnv, ResourceRow
from reconcilers.errors import InputError
from reconcilers.lazylog import lazy_logger
from reconcilers.no_actions import NoActions
from reconcilers.ports import HttpMount, Snapshot
from reconcilers.records import RunRecord, freeze

if TYPE_CHECKING:
    from reconcilers.agents.service import AgentService

log = lazy_logger("stratum.agents")


class AgentsReconciler(NoActions[AgentsDesired]):
    """agents/ and tasks/ -> checked declarations in force. Applies nothing itself."""

    name = NAME

    def __init__(self, env: ReconcilerEnv) -> None:
        self.env = env
        self.settings = AgentSettings()
        self._settings_error = ""
        self.active: AgentsDesired | None = None      # the declarations of the revision in force
        self._staged: AgentsDesired | None = None     # those of the revision being applied (in force if it succeeds)
        self._activating = threading.Lock()
        host = env.settings.get("agents") or {}
        self.host: Mapping[str, Any] = host if isinstance(host, Mapping) else {}
        self.service: AgentService | None = None

    def configure(self, section: Mapping[str, Any]) -> None:
        """The `agents` section of the revision's stratum.ncl."""
        try:
            self.settings, self._settings_error = AgentSettings.from_mapping(section), ""
        except (TypeError, ValueError) as err:
            self.settings, self._settings_error = AgentSettings(), f"stratum.ncl agents: {err}"

    def nickel_inputs(self, snap: Snapshot) -> list[tuple[list[str], str | None]]:
        """The agents/ and tasks/ files `load` evaluates (the daemon evaluates them ahead, with the others)."""
        paths = [e.path for folder in FOLDERS for e in snap.entries(folder, suffixes=(".ncl",))]
        return [(paths, CONTRACT)] if paths else []

    def load(self, snap: Snapshot) -> AgentsDesired:
        """Every agents/ and tasks/ declaration of the commit."""
        if self.env.evaluator is None:
            raise InputError("the agents reconciler needs the Nickel evaluator", hint="report this bug")
        desired = load_agents(snap, self.env.evaluator, self.settings)
        triggers = [t.trigger for t in desired.tasks.values()] + [p.trigger for p in desired.pipelines.values()]
        if any(t.kind == "on_commit" for t in triggers):
            # Only a repo with on_commit triggers pays for listing its whole tree (to tell changed files).
            files = {e.path: e.blob_id for e in snap.entries("")}
            desired = replace(desired, files=files)
        return desired

    def validate(self, desired: AgentsDesired) -> list[Problem]:
        """Every located problem (rejects the revision)."""
        if self._settings_error:
            return [Problem(self._settings_error, "stratum.ncl", reconciler=self.name)]
        if not any((desired.providers, desired.agents, desired.budgets, desired.tasks, desired.checks,
                    desired.pipelines, desired.policies)):
            return list(desired.problems)   # nothing declared: no need to import the checks (jinja2, croniter)
        from reconcilers.agents.validate import validate

        return validate(desired)

    def empty(self) -> AgentsDesired:
        """No agents, no tasks: what a repository without agents/ converges to."""
        return AgentsDesired()

    def policy_resources(self, desired: AgentsDesired) -> list[PolicyResource]:
        """Change control sees each agent, task, pipeline and check (kind `agent`, `task`, ...)."""
        out: list[PolicyResource] = []
        for kind, items in (("provider", desired.providers), ("agent", desired.agents), ("task", desired.tasks),
                            ("pipeline", desired.pipelines), ("check", desired.checks)):
            for item_id, item in items.items():
                where = item.where
                labels = {"role": item.role} if hasattr(item, "role") else {}
                out.append(PolicyResource(self.name, f"{kind}:{item_id}", kind, where.path, "agents", labels,
                                          _digest(item), where.path, where.line))
        return out

    def resource_rows(self, desired: AgentsDesired) -> list[ResourceRow]:
        """What `stratum status` lists."""
        return [(self.name, f"task:{t.id}", "task", t.where.path, _digest(t)) for t in desired.tasks.values()] + \
            [(self.name, f"agent:{a.id}", "agent", a.where.path, _digest(a)) for a in desired.agents.values()]

    def index(self, desired: AgentsDesired, index: Any, revision: str) -> None:
        """Stage the admitted revision's declarations: they come in force when its run succeeds
        (`on_run_finished`), so a revision that is rolled back never schedules or runs anything. The revision
        already applied (a daemon re-indexing it after a restart) is in force at once."""
        self._staged = desired
        applied = index.get_state("last_applied_revision") if index is not None else None
        if applied == revision:
            self._activate(desired)

    def _activate(self, desired: AgentsDesired) -> None:
        """Make `desired` the declarations in force: the service follows them (on_commit for changed files)."""
        with self._activating:          # the run hooks' thread and the resume timer may both get here
            self._activate_locked(desired)

    def _activate_locked(self, desired: AgentsDesired) -> None:
        before = self.active
        self.active = desired
        if self.host.get("one_shot"):
            # No service in a one-shot process (`stratum apply`): keep the declarations for the agents verbs.
            if _declares_work(desired):
                from reconcilers.agents.snapshot import write_declared

                write_declared(self.env.data_dir, desired)
            return
        if self.service is None and not _declares_work(desired):
            return              # nothing to schedule or run: no queue, no scheduler thread, no agents.duckdb
        try:
            service = self._service(desired)
        except Exception as err:  # noqa: BLE001 off the run's path: reported (event + one log line), never fatal
            message = f"the agents service cannot start: {type(err).__name__}: {err}"
            log.error("agents.start_failed", revision=desired.revision[:12], error=message)
            if self.env.events is not None:
                self.env.events("agents.start_failed", message, revision=desired.revision)
            return
        if service is None:
            return
        changed: list[str] = []
        if desired.files and before is not None:
            old = before.files
            changed = sorted({p for p, b in desired.files.items() if old.get(p) != b} | (set(old) - set(desired.files)))
        from reconcilers.agents.snapshot import drop_declared

        drop_declared(self.env.data_dir)         # the service's team is newer than a one-shot run's
        try:
            service.update(desired, changed)
        except Exception:  # agent tasks are off the run's path: a failure is logged, never fatal
            log.exception("agents.update_failed", revision=desired.revision[:12])

    def _service(self, desired: AgentsDesired) -> AgentService | None:
        """The agents service, started on first use in a long-lived process (not in one-shot CLI runs). The
        queue is NATS JetStream when the repo chose `queue = 'nats` and the host names the server
        (`[agents] nats_url` in stratumd.toml); else the embedded DuckDB queue (a warning says why)."""
        if self.service is None and not self.host.get("one_shot") and self.host.get("enabled", True):
            from reconcilers.agents.knowledge import context_for, from_daemon, tool_host
            from reconcilers.agents.policy import RolePolicy
            from reconcilers.agents.service import AgentService

            kb = from_daemon(self.env.workspace) if self.env.workspace is not None else None
            secrets = self.env.secrets

            def resolve(ref: str) -> str:
                if secrets is None:
                    raise InputError(f"no secrets port to resolve {ref}", hint="run agent tasks in the daemon")
                return secrets.resolve(ref, purpose="agents: provider api key")

            def vault_read(ref: str) -> str:
                # Asked only after the repo's agents/policies allowed the role (RolePolicy); audited by the port.
                if secrets is None:
                    raise InputError(f"no secrets port to read {ref}", hint="run agent tasks in the daemon")
                return secrets.resolve(ref, purpose="agents: vault.read tool call")

            policy = RolePolicy(lambda: self.active.policies if self.active is not None else {})
            plan = self._plan()

            events = self.env.events

            def record(kind: str, message: str) -> None:
                if events is not None:
                    events(f"agents.{kind}", message)

            url = str(self.host.get("nats_url", "")) if desired.settings.queue == "nats" else ""
            if desired.settings.queue == "nats" and not url:
                log.warning("agents.nats_unconfigured", hint="set [agents] nats_url in stratumd.toml; using the "
                            "embedded DuckDB queue")
            index = self.env.index

            def drift(since: float) -> list[tuple[float, str, str, str]]:
                # The daemon's drift checks record `drift` events in its index: they feed on_drift triggers.
                if index is None:
                    return []
                return [(float(a), str(b), str(c), str(d)) for a, b, c, d in index.query(
                    "SELECT ts, reconciler, subject, message FROM events WHERE kind = 'drift' AND ts > ? "
                    "ORDER BY ts LIMIT 200", [since])]

            service = AgentService(self.env.data_dir, events=record, secrets=resolve,
                                   tools=tool_host(kb, policy.authorize, plan, vault_read),
                                   context=context_for(kb, plan), queue_url=url, drift_source=drift)
            branch, writer = str(self.host.get("executions_branch", "")), self.env.git_writer
            if branch and writer is not None:
                def commit(path: str, text: str, run: Any) -> None:
                    writer.commit_file(branch, path, text, f"stratum: agents pipeline {run.pipeline} {run.outcome}")

                service.on_pipeline = commit

                def commit_nodes(files: Mapping[str, str], message: str) -> None:
                    writer.commit_files(branch, files, message)

                service.record_executions(commit_nodes)
            # Published whole: the run hooks' thread and readers see no half-configured service.
            self.service = service
        return self.service

    def _plan(self) -> Callable[[], str] | None:
        """The kernel's plan of the watched branch (plan_read.py), when this process knows its `stratum`
        program and the repository's location."""
        import sys
        from pathlib import Path

        from reconcilers.agents.plan_read import kernel_plan

        stratum = Path(sys.executable).with_name("stratum")
        ws = self.env.workspace
        if not stratum.exists() or ws is None:
            return None
        return kernel_plan(str(stratum), str(ws.source.location), self.env.data_dir)

    def on_run_finished(self, record: RunRecord, index: Any) -> None:
        """A succeeded run puts its revision's declarations in force; a failed or rolled-back one queues the
        on_run_failed tasks."""
        staged = self._staged
        if record.status == "succeeded" and staged is not None and staged.revision == record.revision \
                and staged is not self.active:
            self._activate(staged)
        if self.service is not None and record.status in ("failed", "rolled_back"):
            self.service.trigger("on_run_failed", {"run_id": record.run_id, "revision": record.revision,
                                                   "status": record.status, "message": record.message[:2000]})

    def http_mounts(self) -> list[HttpMount]:
        """/agents: webhook triggers and metrics. The daemon's listener asks for its mounts once, at start: the
        one sign this process is a daemon, so the declarations of the revision already applied come back in
        force then (a restart with no new commit would otherwise run no task until the next one)."""
        if self.env.scheduler is not None and not self.host.get("one_shot"):
            self.env.scheduler.call_later(0.5, self._resume, name="agents-resume")
        return [HttpMount("/agents", self._http_app)]

    def _resume(self) -> None:
        """Load and put in force the applied revision's declarations, unless a run did it first."""
        env = self.env
        if self.active is not None or env.index is None or env.revisions is None or env.evaluator is None:
            return
        applied = env.index.get_state("last_applied_revision")
        if not applied:
            return
        try:
            snap = env.revisions.snapshot(applied)
            section: Mapping[str, Any] = {}
            if snap.entry("stratum.ncl") is not None:
                result = env.evaluator.evaluate(snap, ["stratum.ncl"], '(import "stratum.ncl").Settings')
                section = (result.values.get("stratum.ncl") or {}).get("agents") or {}
            self.configure(section)
            desired = self.load(snap)
            if self.validate(desired):
                return                  # it was valid when applied; a contract change since: wait for a commit
        except Exception:  # a failed resume leaves agent tasks off until the next commit, never the daemon
            log.exception("agents.resume_failed", revision=str(applied)[:12])
            return
        with self._activating:
            if self.active is None:
                self._activate_locked(desired)

    def _http_app(self) -> Any:
        from reconcilers.agents.http import app

        return app(lambda: self.service)

    def close(self) -> None:
        """Stop the service (the daemon is stopping)."""
        if self.service is not None:
            self.service.close()
            self.service = None


def _digest(item: Any) -> str:
    """A short, stable fingerprint of a declaration (its fields but where it is written)."""
    import hashlib
    from dataclasses import asdict

    data = {k: v for k, v in asdict(item).items() if k not in ("where", "prompt_line")}
    return hashlib.sha256(freeze(data).encode()).hexdigest()[:16]


def _declares_work(desired: AgentsDesired) -> bool:
    """True when the revision declares anything the service would schedule or run."""
    return bool(desired.tasks or desired.checks or desired.pipelines or desired.agents)
