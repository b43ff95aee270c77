"""AgentsReconciler: the daemon's view of `agents/` and `tasks/`.

1. configure  the `agents` section of stratum.ncl (queue, minimum cron interval, retention)
2. load       evaluate agents/**/*.ncl and tasks/**/*.ncl with nickel/agents.ncl (the daemon's evaluator)
3. validate   roles, agents per role, providers, cron, budgets, templates, pipelines (validate.py)
4. index      the admitted revision's declarations become the ones in force (`active`); the schedule is
              reconciled from them by whoever runs tasks (the daemon's agents service, schedule.py)
5. plan       nothing to apply on a commit: tasks run from the queue, not as a run's actions
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from reconcilers.agents.load import load_agents
from reconcilers.agents.model import NAME, AgentsDesired, AgentSettings
from reconcilers.agents.validate import validate
from reconcilers.base import (
    Action,
    ApplyContext,
    InventoryItem,
    Outcome,
    PolicyResource,
    Problem,
    Reconciler,
    ReconcilerEnv,
    ResourceRow,
)
from reconcilers.errors import ApplyError, InputError
from reconcilers.ports import Snapshot
from reconcilers.records import freeze


class AgentsReconciler(Reconciler[AgentsDesired, None]):
    """agents/ and tasks/ -> checked declarations in force. Applies nothing itself."""

    name = NAME

    def __init__(self, env: ReconcilerEnv) -> None:
        self.env = env
        self.settings = AgentSettings()
        self._settings_error = ""
        self.active: AgentsDesired | None = None      # the declarations of the revision in force

    def configure(self, section: Mapping[str, Any]) -> None:
        """The `agents` section of the revision's stratum.ncl."""
        try:
            self.settings, self._settings_error = AgentSettings.from_mapping(section), ""
        except (TypeError, ValueError) as err:
            self.settings, self._settings_error = AgentSettings(), f"stratum.ncl agents: {err}"

    def load(self, snap: Snapshot) -> AgentsDesired:
        """Every agents/ and tasks/ declaration of the commit."""
        if self.env.evaluator is None:
            raise InputError("the agents reconciler needs the Nickel evaluator", hint="report this bug")
        return load_agents(snap, self.env.evaluator, self.settings)

    def validate(self, desired: AgentsDesired) -> list[Problem]:
        """Every located problem (rejects the revision)."""
        if self._settings_error:
            return [Problem(self._settings_error, "stratum.ncl", reconciler=self.name)]
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
        """The admitted revision's declarations are in force from now on."""
        self.active = desired

    def observe(self, desired: AgentsDesired, inventory: list[InventoryItem]) -> None:
        """Nothing to observe: tasks are run by the queue's workers."""
        return None

    def plan(self, desired: AgentsDesired, observed: None, inventory: list[InventoryItem]) -> list[Action]:
        """No actions: a commit changes the schedule (index), not the world."""
        return []

    def apply(self, action: Action, ctx: ApplyContext) -> Outcome:
        """Never called: `plan` returns no actions."""
        raise ApplyError(f"the agents reconciler has no actions (got {action.id})", where=action.target)

    def compensate(self, action: Action, ctx: ApplyContext) -> None:
        """Nothing to undo."""
        return None


def _digest(item: Any) -> str:
    """A short, stable fingerprint of a declaration (its fields but where it is written)."""
    import hashlib
    from dataclasses import asdict

    data = {k: v for k, v in asdict(item).items() if k not in ("where", "prompt_line")}
    return hashlib.sha256(freeze(data).encode()).hexdigest()[:16]
