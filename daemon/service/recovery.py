"""Start-up recovery: rebuild a lost or corrupt index from git, resolve runs a killed daemon left `running`, and
work out which commit is still owed a run.

A reconciler failing to load the last good revision leaves it unknown, never the daemon down; a run a crash
interrupted stays rolled back, so a commit that kills the daemon cannot make it crash-loop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from daemon.index.rebuild import rebuild
from daemon.run.runtime import Runtime
from daemon.service.commits import Commits


def recover(rt: Runtime, on_interrupted: str, commits: Commits, logger: Any,
            guard: Callable[[Callable[[], Any]], None]) -> None:
    """Bring the index and the interrupted runs to a consistent state; set `commits` from the index."""
    if rt.index.rebuilt_reason:
        logger.warning("index_corrupt", message=rt.index.rebuilt_reason)
        guard(lambda: rebuild(rt.source, rt.pipeline))
    elif rt.index.get_state("last_seen_head") is None and rt.index.query("SELECT count(*) FROM runs")[0][0] == 0:
        guard(lambda: rebuild(rt.source, rt.pipeline))
    stopped = rt.index.get_state("stopped_run")
    resolved = rt.pipeline.resolve_interrupted(on_interrupted)
    for result in resolved:
        logger.warning("interrupted_run_resolved", run_id=result.run_id, outcome=result.status)
    if stopped:
        rt.index.set_state("stopped_run", None)
    commits.last_head = head = rt.index.get_state("last_seen_head")
    # Still owed a run: a commit recorded while suspended or in a deny window and never run, and the head whose
    # run a graceful stop interrupted (rolled back above: the stop was not its fault).
    interrupted = any(r.run_id == stopped and r.revision == head for r in resolved)
    applied = rt.index.get_state("last_applied_revision")
    if head and (head != rt.index.get_state("last_attempted_revision") or (interrupted and head != applied)):
        commits.pending = head
