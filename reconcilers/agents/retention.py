"""Retention of execution records: by age and by count (`agents.retention_days`, `agents.retention_count` in
stratum.ncl; `stratum task purge` runs it now, the service after each revision)."""

from __future__ import annotations

import time

from reconcilers.agents.store import Store

DAY = 86_400.0


def purge(store: Store, days: float, keep: int, now: float | None = None) -> int:
    """Delete executions finished more than `days` ago, then all but the newest `keep`; how many went.
    Finished queue entries and tool-call audits of the same age go with them (decisions are in the rows)."""
    cutoff = (now if now is not None else time.time()) - days * DAY
    before = int(store.query("SELECT count(*) FROM executions")[0][0])
    with store.transaction() as con:
        con.execute("DELETE FROM executions WHERE finished < ?", [cutoff])
        con.execute("DELETE FROM executions WHERE id IN (SELECT id FROM executions ORDER BY finished DESC "
                    "OFFSET ?)", [keep])
        con.execute("DELETE FROM queue WHERE state IN ('done', 'dead', 'cancelled') AND finished_at < ?", [cutoff])
        con.execute("DELETE FROM tool_calls WHERE at_ts < ?", [cutoff])
    return before - int(store.query("SELECT count(*) FROM executions")[0][0])
