"""Execution nodes of task runs, committed in batches to the executions branch (the daemon's git writer).

Every recorded execution gets an `execution` knowledge node (execution_node.task_node). Committing one per run
would add a commit per run to the branch, so nodes wait here and `flush()` commits them together (the service
flushes every few seconds and when it stops). Both the wait and the branch are bounded:

- at most MAX_PENDING nodes wait; when more arrive before a flush, the oldest are dropped (counted, logged)
- each task rotates over `keep` slots (`executions/agents/tasks/<task>/<slot>.md`, keep = the smaller of
  `agents.retention_count` and MAX_SLOTS): the branch's tree holds at most `keep` nodes per task, and an older
  node stays in the branch's history, as git keeps it
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import structlog

from reconcilers.agents.execution_node import task_node
from reconcilers.agents.runner import Outcome
from reconcilers.agents.store import Store

log = structlog.get_logger("stratum.agents")

MAX_PENDING = 500            # nodes waiting for a flush
MAX_SLOTS = 100              # nodes per task in the branch's tree
RECORDED = ("succeeded", "failed", "skipped", "blocked")

# commit(files, message): the git writer, bound to the executions branch
Commit = Callable[[Mapping[str, str], str], None]


@dataclass
class NodeWriter:
    """Collects task execution nodes and commits them in batches."""

    store: Store
    commit: Commit
    keep: int = MAX_SLOTS
    dropped: int = 0
    _pending: dict[str, str] = field(default_factory=dict)
    _next: dict[str, int] = field(default_factory=dict)     # task -> its next slot number (saved at each flush)
    _guard: threading.Lock = field(default_factory=threading.Lock)
    _flushing: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.store.execute("CREATE TABLE IF NOT EXISTS node_slots (task VARCHAR PRIMARY KEY, next BIGINT)")

    def add(self, out: Outcome, revision: str) -> str:
        """Queue the node of a recorded execution; its path ("" when the execution is not recorded)."""
        if out.outcome not in RECORDED:
            return ""
        keep = max(1, min(self.keep, MAX_SLOTS))
        with self._guard:
            seq = self._next.get(out.task)
        if seq is None:
            # Read once per task; kept in memory and saved with each flush (no extra commit per execution).
            rows = self.store.query("SELECT next FROM node_slots WHERE task = ?", [out.task])
            seq = int(rows[0][0]) if rows else 0
        with self._guard:
            seq = self._next[out.task] = max(seq, self._next.get(out.task, 0)) + 1
        path, text = task_node(out, revision, (seq - 1) % keep)
        with self._guard:
            self._pending.pop(path, None)           # a newer node of the same slot replaces a waiting one
            self._pending[path] = text
            while len(self._pending) > MAX_PENDING:
                self._pending.pop(next(iter(self._pending)))
                self.dropped += 1
        return path

    def pending(self) -> int:
        """Nodes waiting for a flush."""
        with self._guard:
            return len(self._pending)

    def flush(self) -> int:
        """Commit the waiting nodes in one commit; how many. A failed commit is logged and its nodes dropped
        (the DuckDB record of each execution stands; a branch that cannot be written must not grow memory)."""
        with self._flushing:
            with self._guard:
                files, self._pending = self._pending, {}
                dropped, self.dropped = self.dropped, 0
            if dropped:
                log.warning("agents.execution_nodes_dropped", count=dropped,
                            hint="more task executions finished between two flushes than are kept waiting")
            if not files:
                return 0
            with self._guard:
                slots = list(self._next.items())
            with self.store.transaction() as con:       # new nodes moved the counters: save them, once a batch
                con.executemany("INSERT OR REPLACE INTO node_slots VALUES (?, ?)", slots)
            try:
                self.commit(files, f"stratum: agents, {len(files)} task execution node(s)")
            except Exception as err:  # noqa: BLE001 a courtesy commit never stops the service
                log.warning("agents.execution_nodes_failed", count=len(files), error=f"{type(err).__name__}: {err}")
                return 0
            return len(files)
