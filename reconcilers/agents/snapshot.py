"""What the CLI reads: the declarations in force (kept in DuckDB by the service, so `stratum task run` works
without a checkout) and a status snapshot file the running service rewrites (`<data-dir>/agents/status.json`),
which readers use while the daemon holds the DuckDB file (DuckDB allows one process)."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from reconcilers.agents import budget as budgets
from reconcilers.agents.load import BUILDERS, SECTIONS
from reconcilers.agents.model import AgentsDesired, AgentSettings, Where
from reconcilers.agents.queue import AWAITING
from reconcilers.agents.store import Store

TEAM_STATE = "team"
HISTORY_KEPT = 200           # executions in the status snapshot


def team_json(desired: AgentsDesired) -> str:
    """The declarations as JSON."""
    return json.dumps({s: {k: asdict(v) for k, v in getattr(desired, s).items()} for s in SECTIONS}
                      | {"settings": asdict(desired.settings), "revision": desired.revision,
                         "policies": dict(desired.policies)})


def team_from_json(text: str) -> AgentsDesired:
    """The declarations back from `team_json`: each built again by load.py's builders (one decoder for the
    Nickel values and this JSON, so a field added to a declaration cannot be lost on the way)."""
    raw = json.loads(text)
    found: dict[str, dict[str, Any]] = {}
    for section in SECTIONS:
        found[section] = {}
        for key, value in raw.get(section, {}).items():
            where = Where(**value.get("where", {}))
            built = BUILDERS[section](key, value, where)
            # The template's first line is known only when loading from the commit: keep it.
            found[section][key] = replace(built, prompt_line=int(value.get("prompt_line", 0))) \
                if section == "tasks" else built
    return AgentsDesired(revision=raw.get("revision", ""), settings=AgentSettings(**raw.get("settings", {})),
                         problems=(), policies=MappingProxyType(dict(raw.get("policies", {}))),
                         **{s: MappingProxyType(found[s]) for s in SECTIONS})


DECLARED_FILE = "agents-declared.json"   # a one-shot `stratum apply`'s declarations, for the agents verbs


def write_declared(data_dir: Path, desired: AgentsDesired) -> None:
    """Keep the declarations a one-shot run (`stratum apply`) put in force where the agents verbs find them,
    without opening a DuckDB file on the apply's path: `stratum task list` / `task run` import them."""
    path = data_dir / DECLARED_FILE
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(team_json(desired))
    tmp.replace(path)


def take_declared(data_dir: Path, store: Store) -> None:
    """Import what a one-shot run declared (write_declared) into the agents' store, then drop the file: the store
    is the one record from then on (a daemon that activates a revision drops the file too, its team being newer)."""
    path = data_dir / DECLARED_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        return
    save_team(store, team_from_json(text))
    path.unlink(missing_ok=True)


def drop_declared(data_dir: Path) -> None:
    """Forget a one-shot run's declarations (the daemon's service now holds newer ones)."""
    (data_dir / DECLARED_FILE).unlink(missing_ok=True)


def save_team(store: Store, desired: AgentsDesired) -> None:
    """Keep the declarations in force in the agents' DuckDB file."""
    store.execute("CREATE TABLE IF NOT EXISTS state (key VARCHAR PRIMARY KEY, value VARCHAR)")
    store.execute("INSERT OR REPLACE INTO state VALUES (?, ?)", [TEAM_STATE, team_json(desired)])


def load_team(store: Store) -> AgentsDesired | None:
    """The declarations the service last had, or None."""
    store.execute("CREATE TABLE IF NOT EXISTS state (key VARCHAR PRIMARY KEY, value VARCHAR)")
    rows = store.query("SELECT value FROM state WHERE key = ?", [TEAM_STATE])
    return team_from_json(str(rows[0][0])) if rows else None


def status(store: Store, team: AgentsDesired, next_fires: dict[str, Any] | None = None,
           history: int = HISTORY_KEPT, pending: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Everything the read verbs show, as JSON-ready data."""
    spend = budgets.Spend(store, time.time)
    roles = sorted({a.role for a in team.agents.values()} | set(team.budgets))
    budget_rows = []
    for role in roles:
        b = team.budgets.get(role)
        u = spend.usage(role)
        budget_rows.append({"role": role, "month": round(u.month, 6), "week": round(u.week, 6),
                            "monthly_cap": b.monthly if b else None, "weekly_cap": b.weekly if b else None,
                            "used": round(min(budgets.share(b, u), 1e9), 4), "over": b.over if b else None})
    fires = next_fires or {}
    return {
        "revision": team.revision, "written": time.time(),
        "tasks": [{"id": t.id, "title": t.title, "role": t.role, "trigger": t.trigger.kind,
                   "schedule": t.trigger.schedule, "kind": "command" if t.command else "prompt",
                   "approval": t.approval, "next_fire": fires.get(f"task:{t.id}")} for t in team.tasks.values()],
        "pipelines": [{"id": p.id, "title": p.title, "trigger": p.trigger.kind,
                       "steps": [s.id for s in p.steps]} for p in team.pipelines.values()],
        "agents": [{"id": a.id, "role": a.role, "providers": list(a.providers), "tools": list(a.tools),
                    "max_concurrency": a.max_concurrency} for a in team.agents.values()],
        "checks": [{"id": c.id, "kind": c.kind, "interval": c.interval, "failures": c.failures}
                   for c in team.checks.values()],
        "check_states": store.dicts("SELECT * FROM check_state ORDER BY check_id"),
        "budgets": budget_rows,
        # The queue's own list when the caller has it (NATS holds approvals in a bucket, not in this file).
        "pending": pending if pending is not None else store.dicts(
            "SELECT id, role, task, trigger, enqueued_at FROM queue WHERE state = ? ORDER BY enqueued_at",
            [AWAITING]),
        "queue": dict(store.query("SELECT state, count(*) FROM queue GROUP BY state")),
        "history": store.dicts("SELECT * FROM executions ORDER BY started DESC LIMIT ?", [history]),
        "assignments": store.dicts("SELECT message, task, agent AS winner, rule, explain, started AS at_ts "
                                   "FROM executions WHERE explain IS NOT NULL AND explain <> '' "
                                   "ORDER BY started DESC LIMIT 50"),
    }


def write_status(path: Path, data: dict[str, Any]) -> None:
    """Write the snapshot whole, then rename (readers never see half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)     # outputs and errors: the daemon's user
    with os.fdopen(fd, "w") as fh:
        fh.write(json.dumps(data, default=str))
    os.replace(tmp, path)
