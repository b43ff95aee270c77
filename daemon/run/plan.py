"""Plans as one dependency graph, executed in order with checkpoints; rollback from checkpoints.

1. `order` joins the actions of all reconcilers into one graph (graphlib); dependencies on actions that are
   not in the plan are already satisfied and dropped; a cycle is an input error naming the cycle.
2. `Executor.execute` runs ready actions in parallel (bounded). Each finished action is checkpointed in
   DuckDB, and inventory updated, *before* any action that depends on it starts. The first failure stops
   scheduling; actions already running finish and are checkpointed too. So does a shutdown (`stop`): the
   run is left open with its checkpoints, and the next start rolls it back or resumes it.
3. `Executor.compensate` runs the declared compensations of completed actions in reverse completion order.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import graphlib
import json
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from daemon.errors import CycleError, StratumError
from daemon.run.retry import RetryPolicy, apply_with_retry
from reconcilers.base import Action, AnyReconciler, ApplyContext, InventoryItem, Outcome, freeze

if TYPE_CHECKING:
    from daemon.index.store import Index
    from daemon.service.metrics import Metrics


@dataclass(frozen=True, slots=True)
class ExecResult:
    """What an execution did: completed actions in completion order, and the failure that stopped it."""

    completed: tuple[tuple[Action, Outcome], ...] = ()
    failed: tuple[Action, str] | None = None
    next_seq: int = 0
    interrupted: bool = False                 # stopped (shutdown) before every action was started

    @property
    def ok(self) -> bool:
        """True when every action completed."""
        return self.failed is None


def _graph(actions: Sequence[Action]) -> graphlib.TopologicalSorter[str]:
    ids = {a.id for a in actions}
    sorter: graphlib.TopologicalSorter[str] = graphlib.TopologicalSorter()
    for a in actions:
        sorter.add(a.id, *[d for d in a.depends_on if d in ids and d != a.id])
    return sorter


def order(actions: Sequence[Action]) -> graphlib.TopologicalSorter[str]:
    """A prepared topological sorter over the actions' ids; raises CycleError naming the cycle."""
    sorter = _graph(actions)
    try:
        sorter.prepare()
    except graphlib.CycleError as err:
        cycle = " -> ".join(err.args[1])
        raise CycleError(f"dependency cycle between actions: {cycle}",
                         hint="remove one of the depends_on links in the cycle") from err
    return sorter


def sequence(actions: Sequence[Action]) -> list[Action]:
    """The actions in one valid serial order (for display)."""
    by_id = {a.id: a for a in actions}
    if not any(d in by_id and d != a.id for a in actions for d in a.depends_on):
        # No edge among them (5,000 independent files): graphlib's order is the order they were added in (an
        # id's first place, its last action), without building the graph.
        return [by_id[i] for i in by_id]
    try:
        return [by_id[i] for i in _graph(actions).static_order()]
    except graphlib.CycleError as err:
        cycle = " -> ".join(err.args[1])
        raise CycleError(f"dependency cycle between actions: {cycle}",
                         hint="remove one of the depends_on links in the cycle") from err


def _inventory_item(outcome: Outcome) -> InventoryItem | None:
    inv = outcome.inventory
    if not inv:
        return None
    data = inv["data"]
    return InventoryItem(str(inv["reconciler"]), str(inv["resource_id"]), str(inv["kind"]),
                         data if isinstance(data, str) else freeze(data))


@dataclass
class Executor:
    """Runs plans against reconcilers, writing checkpoints and inventory to the index."""

    reconcilers: Mapping[str, AnyReconciler]
    index: Index
    parallelism: int = 4
    on_done: Callable[[Action, str], None] | None = None
    stop: threading.Event | None = None       # set on shutdown: start nothing new, let running actions finish
    retry: RetryPolicy = field(default_factory=RetryPolicy)   # transient and waiting errors (daemon/run/retry.py)
    metrics: Metrics | None = None
    _stats: dict[str, int] = field(default_factory=dict)

    def _apply_one(self, action: Action, ctx: ApplyContext) -> Outcome:
        return apply_with_retry(self.reconcilers[action.reconciler].apply, action, ctx, self.retry, self._retried,
                                self.stop)

    def _retried(self, reason: str, action: Action, message: str) -> None:
        """A retry or a wait is visible while it happens: an event and a count (the index is thread-safe)."""
        self.index.event(f"action_{'waiting' if reason == 'waiting' else 'retry'}", message,
                         reconciler=action.reconciler, subject=action.id)
        if self.metrics is not None:
            self.metrics.retries.labels(action.reconciler, reason).inc()

    def execute(self, run_id: str, actions: Sequence[Action], ctx: ApplyContext, seq: int = 0) -> ExecResult:
        """Apply `actions` in dependency order; see the module docstring."""
        if not actions:
            return ExecResult(next_seq=seq)
        by_id = {a.id: a for a in actions}
        sorter = order(actions)
        completed: list[tuple[Action, Outcome]] = []
        failed: tuple[Action, str] | None = None
        width = max(1, self.parallelism)
        # Ready actions wait here and only `width` are handed to the pool at a time, so a failure or a
        # shutdown stops everything not yet started (and `started` is checkpointed when an action really
        # starts). Finished futures arrive on a queue: waiting costs O(1) per action, where `cf.wait` over the
        # futures in flight cost O(in flight) per wake-up: quadratic at 20,000 independent actions.
        waiting: collections.deque[str] = collections.deque()
        finished: queue.SimpleQueue[cf.Future[Outcome]] = queue.SimpleQueue()
        with cf.ThreadPoolExecutor(max_workers=width, thread_name_prefix="apply") as pool:
            running: dict[cf.Future[Outcome], tuple[Action, float, int]] = {}
            while running or (failed is None and not self._stopping() and sorter.is_active()):
                if failed is None and not self._stopping():
                    waiting.extend(sorter.get_ready())
                    starting: list[tuple[Action, int]] = []
                    with self.index.batch():
                        while waiting and len(running) + len(starting) < width:
                            action = by_id[waiting.popleft()]
                            seq += 1
                            # A `started` checkpoint first: a daemon killed while this action is in flight
                            # must treat it as possibly applied (and compensate it) on restart.
                            self.index.checkpoint(run_id, seq, action, "started", time.time())
                            starting.append((action, seq))
                    for action, action_seq in starting:
                        fut = pool.submit(self._apply_one, action, ctx)
                        running[fut] = (action, time.time(), action_seq)
                        fut.add_done_callback(finished.put)
                if not running:
                    break
                done = {finished.get()}
                while True:                      # and whatever else finished meanwhile
                    try:
                        done.add(finished.get_nowait())
                    except queue.Empty:
                        break
                # The checkpoints of everything that finished together: one journal write, before any
                # dependent action is scheduled.
                with self.index.batch():
                    failure = self._record(run_id, ctx, done, running, sorter, completed)
                failed = failed or failure
        interrupted = failed is None and sorter.is_active() and self._stopping()
        return ExecResult(completed=tuple(completed), failed=failed, next_seq=seq, interrupted=interrupted)

    def _stopping(self) -> bool:
        return self.stop is not None and self.stop.is_set()

    def _record(self, run_id: str, ctx: ApplyContext, done: set[cf.Future[Outcome]],
                running: dict[cf.Future[Outcome], tuple[Action, float, int]],
                sorter: graphlib.TopologicalSorter[str], completed: list[tuple[Action, Outcome]],
                ) -> tuple[Action, str] | None:
        """Checkpoint the finished actions, update inventory, release their dependents; the first failure."""
        failure: tuple[Action, str] | None = None
        for fut in done:
            action, started, seq = running.pop(fut)
            try:
                outcome = fut.result()
            except Exception as err:  # noqa: BLE001 any failure of one action is recorded, not raised
                message = err.render() if isinstance(err, StratumError) else f"{type(err).__name__}: {err}"
                self.index.checkpoint(run_id, seq, action, "failed", started, message)
                failure = failure or (action, message)
                self._notify(action, "failed")
                continue
            try:
                item = _inventory_item(outcome)
            except (KeyError, TypeError, ValueError) as err:
                # A reconciler bug must fail its action (and roll the run back), never crash the run half-applied.
                message = (f"the {action.reconciler} reconciler returned a malformed inventory entry for "
                           f"{action.target} ({type(err).__name__}: {err}); report this bug")
                self.index.checkpoint(run_id, seq, action, "failed", started, message)
                failure = failure or (action, message)
                self._notify(action, "failed")
                continue
            self.index.checkpoint(run_id, seq, action, "done", started, outcome.message)
            if outcome.removed:
                self.index.drop_inventory(action.reconciler, action.target)
            elif item is not None:
                self.index.put_inventory(item, ctx.revision)
            completed.append((action, outcome))
            sorter.done(action.id)
            self._notify(action, "done")
        return failure

    def compensate(self, run_id: str, completed: Sequence[Action], ctx: ApplyContext, seq: int,
                   ) -> tuple[int, list[str]]:
        """Run compensations of `completed` in reverse; returns the next seq and the errors met."""
        errors: list[str] = []
        for action in reversed(completed):
            if not action.compensation:
                continue
            seq += 1
            started = time.time()
            try:
                self.reconcilers[action.reconciler].compensate(action, ctx)
                self.index.checkpoint(run_id, seq, _compensation_record(action), "compensated", started)
            except Exception as err:  # noqa: BLE001 recorded; the rollback goes on with the rest
                message = err.render() if isinstance(err, StratumError) else str(err)
                errors.append(f"{action.id}: {message}")
                self.index.checkpoint(run_id, seq, _compensation_record(action), "failed", started, message)
        return seq, errors

    def _notify(self, action: Action, status: str) -> None:
        if self.on_done is not None:
            self.on_done(action, status)


def _compensation_record(action: Action) -> Action:
    comp = json.loads(action.compensation or "{}")
    return Action(id=f"{action.id}#compensate", reconciler=action.reconciler, kind="run", target=action.target,
                  summary=f"compensate {action.target}: {str(comp.get('run', ''))[:60]}", change=action.change,
                  compensation=action.compensation)
