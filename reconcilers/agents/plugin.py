"""The agents reconciler as a plugin (entry point `agents`), with the `stratum task`, `stratum agent` and
`stratum check` verb groups (reconcilers/agents/cli.py)."""

from __future__ import annotations

from reconcilers.plugin import Plugin, Preload, Verb

PLUGIN = Plugin(
    name="agents",
    reconciler="reconcilers.agents.reconciler:AgentsReconciler",
    verbs=(
        Verb("task", "reconcilers.agents.cli:task", "Agent tasks: list, run, history, approvals, purge."),
        Verb("agent", "reconcilers.agents.cli:agent", "Agents: list, why one was chosen, budgets."),
        Verb("check", "reconcilers.agents.cli:check", "Monitor checks: list and status."),
    ),
    order=40,
    worker="reconcilers.agents.remote:serve_worker",
    # validate compiles prompt templates (agents/) and checks cron schedules (tasks/)
    preload=(Preload("agents", ("jinja2",)), Preload("tasks", ("croniter",))),
)
