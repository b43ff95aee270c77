"""Which commits the daemon has seen on its branch, and which one it owes a run.

Every new commit is recorded (the newest runs; the ones in between are `superseded`); a force push is reported as
history rewritten; a missing branch is reported once. A commit that cannot run now (suspended, a deny window) stays
pending, `queued`, and runs when the block ends.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from daemon.errors import StratumError
from daemon.run.runtime import Runtime


class Commits:
    """The branch head last seen and the commit owed a run (`pending`), for one daemon."""

    def __init__(self, branch: str, logger: Any) -> None:
        self.branch = branch
        self.logger = logger
        self.last_head: str | None = None
        self.pending: str | None = None      # the newest commit recorded but not yet run (suspended, window)
        self._branch_missing = False
        self._queued: tuple[str, str] | None = None

    def look(self, rt: Runtime, retry: Callable[[], None]) -> None:
        """Record what is new on the branch; the newest new commit becomes pending. `retry` is called when the
        host (not the commit) failed, since no trigger may come again for a commit already pushed."""
        try:
            head = rt.source.head()
        except (StratumError, OSError) as err:
            self.logger.error("source_error", message=err.render() if isinstance(err, StratumError) else str(err))
            if isinstance(err, OSError):     # EMFILE, EIO: the host's trouble; look again shortly
                retry()
            return
        if head is None:
            if not self._branch_missing:
                self._branch_missing = True
                msg = f"branch {self.branch} does not exist; the last applied revision stays in force"
                self.logger.warning("branch_missing", message=msg)
                rt.index.event("branch_missing", msg)
            return
        self._branch_missing = False
        if head == self.last_head:
            return
        commits = rt.source.new_commits(self.last_head, head)
        rt.index.record_commits(commits)
        rt.pipeline.metrics.commits.inc(len(commits))
        if self.last_head is not None and not rt.source.is_ancestor(self.last_head, head):
            msg = f"history rewritten: {self.last_head[:12]} is not an ancestor of {head[:12]} (force push)"
            self.logger.warning("history_rewritten", message=msg)
            rt.index.event("history_rewritten", msg, revision=head)
        for c in commits[:-1]:
            rt.index.set_revision_status(c.id, "superseded")
        if self.pending and self.pending != head:
            rt.index.set_revision_status(self.pending, "superseded")
        self.last_head = head
        self.pending = head
        rt.index.set_state("last_seen_head", head)

    def take(self, rt: Runtime, blocked: str) -> tuple[str | None, str]:
        """(the pending commit to run now, or None; a status note when it was just queued, else "")."""
        head = self.pending
        if head is None:
            return None, ""
        if blocked:
            if (head, blocked) == self._queued:
                return None, ""
            self.logger.info("queued", revision=head[:12], reason=blocked)
            rt.index.set_revision_status(head, "queued")
            rt.index.event("queued", f"{head[:12]} queued: {blocked}", revision=head)
            self._queued = (head, blocked)
            return None, f"{head[:12]} queued: {blocked}"
        self._queued = None
        self.pending = None
        return head, ""

    def ran(self, revision: str, status: str) -> None:
        """A run outside the loop (`stratum apply`) applied `revision`: nothing is owed for it any more."""
        if self.pending == revision and status == "succeeded":
            self.pending = None
