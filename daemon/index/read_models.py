"""Read models over the index: status with Ready conditions (Flux-style), the run log, events."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:                      # a type only: `stratum status` asking a daemon never loads DuckDB
    from daemon.index.store import Index

_REASONS = {
    "succeeded": ("True", "ReconciliationSucceeded"),
    "rejected": ("False", "ValidationFailed"),
    "rolled_back": ("False", "RolledBack"),
    "failed": ("False", "ReconciliationFailed"),
    "running": ("Unknown", "Progressing"),
    "recovery_failed": ("False", "RecoveryFailed"),
}


def status(index: Index, reconcilers: Iterable[str], unavailable: Mapping[str, str],
           extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Per reconciler: last attempted and applied revisions and a Ready condition with reason and message."""
    attempted = index.get_state("last_attempted_revision")
    last = index.query_dicts("SELECT id, revision, status, message, finished FROM runs "
                             "WHERE status != 'running' ORDER BY started DESC LIMIT 1")
    running = index.query_dicts("SELECT id, revision FROM runs WHERE status = 'running' LIMIT 1")
    run = last[0] if last else None
    out: dict[str, Any] = {"last_attempted_revision": attempted,
                           "last_applied_revision": index.get_state("last_applied_revision"),
                           "suspended": index.get_state("suspended") == "true",
                           "reconcilers": {}}
    at = index.get_state("suspended_at")
    out["suspension"] = {"reason": index.get_state("suspended_reason") or "",
                         "by": index.get_state("suspended_by") or "",
                         "at": float(at) if at else None} if out["suspended"] else None
    names = list(reconcilers) + [n for n in unavailable if n not in reconcilers]
    for name in names:
        applied = index.get_state(f"last_applied_revision:{name}")
        if name in unavailable:
            cond = {"type": "Ready", "status": "False", "reason": "Unavailable", "message": unavailable[name]}
        elif running:
            cond = {"type": "Ready", "status": "Unknown", "reason": "Progressing",
                    "message": f"applying {running[0]['revision'][:12]} (run {running[0]['id']})"}
        elif run is None:
            cond = {"type": "Ready", "status": "Unknown", "reason": "NoRunYet", "message": "no revision applied yet"}
        else:
            state, reason = _REASONS.get(str(run["status"]), ("False", "Unknown"))
            message = (f"applied revision {run['revision'][:12]}{_waiting(index, str(run['id']), name)}"
                       if run["status"] == "succeeded" else str(run["message"])[:1000])
            cond = {"type": "Ready", "status": state, "reason": reason, "message": message}
        out["reconcilers"][name] = {"last_attempted_revision": attempted, "last_applied_revision": applied,
                                    "conditions": [cond]}
    if extra:
        out.update(extra)
    return out


def _waiting(index: Index, run_id: str, reconciler: str) -> str:
    """'; N waiting, first: why' when the run left some of this reconciler's actions waiting (a secret behind a
    sealed or disabled vault: the file is left as it is until the vault opens), else ''. A run that succeeded
    with work still pending must not read as fully applied."""
    rows = index.query("SELECT count(*), arg_min(message, seq) FROM actions WHERE run_id = ? AND reconciler = ? "
                       "AND status = 'done' AND starts_with(message, 'waiting: ')", [run_id, reconciler])
    count, first = rows[0] if rows else (0, None)
    if not count:
        return ""
    return f"; {count} action(s) waiting, first: {str(first)[len('waiting: '):][:500]}"


def runs(index: Index, limit: int = 20, actions: bool = False) -> list[dict[str, Any]]:
    """The newest runs first, problems decoded (and each run's actions, when asked: MCP's recent_runs)."""
    rows = index.query_dicts(
        "SELECT id, revision, trigger, status, started, finished, duration_ms, message, problems FROM runs "
        "ORDER BY started DESC LIMIT ?", [limit])
    for row in rows:
        row["problems"] = json.loads(row["problems"] or "[]")
        if actions:
            row["actions"] = index.query_dicts(
                "SELECT action_id, kind, target, summary, status FROM actions WHERE run_id = ? ORDER BY seq",
                [row["id"]])
    return rows


def events(index: Index, limit: int = 50) -> list[dict[str, Any]]:
    """The newest events first."""
    return index.query_dicts("SELECT * FROM events ORDER BY ts DESC LIMIT ?", [limit])


SUSPENSION_KEYS = ("suspended", "suspended_reason", "suspended_by", "suspended_at")


def set_suspended(index: Index, on: bool, reason: str, by: str, now: float) -> dict[str, Any]:
    """Suspend or resume applying in the index; an event only when that changes anything.

    Suspending an already suspended host keeps the first reason, author and time. Resuming clears them all.
    Returns `suspended`, `changed` and the suspension's `reason`, `by` and `at` (a Unix time; None when resumed).
    """
    was = index.get_state("suspended") == "true"
    if on != was:
        who = f" by {by}" if by else ""
        with index.transaction():
            for key, value in zip(SUSPENSION_KEYS, ("true", reason, by, str(now)), strict=True):
                index.set_state(key, value if on else None)
            index.event("suspended" if on else "resumed",
                        f"applying suspended{who}" + (f": {reason}" if reason else "") if on
                        else f"applying resumed{who}", subject=by)
    at = index.get_state("suspended_at")
    return {"suspended": on, "changed": on != was, "reason": index.get_state("suspended_reason") or "",
            "by": index.get_state("suspended_by") or "", "at": float(at) if at else None}
