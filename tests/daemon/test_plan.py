"""Plans as one dependency graph: ordering, cycles named, bounded parallel execution, failure stops
dependents, checkpoints before dependents start, compensation in reverse."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon.errors import ApplyError, CycleError
from daemon.index.store import Index
from daemon.run.plan import Executor, order, sequence
from reconcilers.base import Action, ApplyContext, InventoryItem, Outcome, Problem, Reconciler
from tests.fixtures import wait_until

CTX = ApplyContext(run_id="run", revision="rev")


def act(aid: str, *deps: str, compensation: str | None = None, kind: str = "create") -> Action:
    """An action `t:<aid>` of the test reconciler depending on `t:<dep>`s."""
    return Action(
        id=f"t:{aid}",
        reconciler="t",
        kind=kind,  # type: ignore[arg-type]
        target=aid,
        summary=f"{kind} {aid}",
        change=json.dumps({"n": aid}),
        depends_on=tuple(f"t:{d}" for d in deps),
        compensation=compensation,
    )


class Recorder(Reconciler[Any, Any]):
    """A real in-memory reconciler: apply runs a per-target hook, and every call is recorded in order."""

    name = "t"

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: list[str] = []
        self.hooks: dict[str, Callable[[Action], object]] = {}
        self.fail: set[str] = set()
        self.fail_compensation: set[str] = set()

    def load(self, snap: Any) -> Any:
        """Unused by the executor."""

    def validate(self, desired: Any) -> list[Problem]:
        """Unused by the executor."""
        return []

    def observe(self, desired: Any, inventory: list[InventoryItem]) -> Any:
        """Unused by the executor."""

    def plan(self, desired: Any, observed: Any, inventory: list[InventoryItem]) -> list[Action]:
        """Unused by the executor."""
        return []

    def drift(self, desired: Any, observed: Any, inventory: list[InventoryItem]) -> list[Problem]:
        """Unused by the executor."""
        return []

    def apply(self, action: Action, ctx: ApplyContext) -> Outcome:
        """Run the target's hook, record the call, fail when asked to."""
        hook = self.hooks.get(action.target)
        if hook is not None:
            hook(action)
        with self.lock:
            self.calls.append(action.target)
        if action.target in self.fail:
            raise ApplyError(f"{action.target} broke", where=action.id)
        if action.kind == "delete":
            return Outcome(action.id, True, "deleted", removed=True)
        return Outcome(
            action.id,
            True,
            f"applied {action.target}",
            inventory={
                "reconciler": "t",
                "resource_id": action.target,
                "kind": "thing",
                "data": {"n": action.target},
            },
        )

    def compensate(self, action: Action, ctx: ApplyContext) -> None:
        """Record the compensation; fail when asked to."""
        with self.lock:
            self.calls.append(f"undo {action.target}")
        if action.target in self.fail_compensation:
            raise ApplyError(f"cannot undo {action.target}")


@pytest.fixture
def index(tmp_path: Path) -> Iterator[Index]:
    """A fresh index."""
    idx = Index(tmp_path / "index.duckdb")
    yield idx
    idx.close()


@pytest.fixture
def rec() -> Recorder:
    """The test reconciler."""
    return Recorder()


def _executor(rec: Recorder, index: Index, parallelism: int = 4) -> Executor:
    return Executor({"t": rec}, index, parallelism)


def _final_status(index: Index, run_id: str) -> dict[str, str]:
    """The last checkpointed status of each action id."""
    return {a.id: status for a, status in index.run_actions(run_id)}


# -- ordering -------------------------------------------------------------------------------------------
def test_sequence_puts_dependencies_first() -> None:
    """Every action comes after everything it depends on."""
    actions = [act("app", "dir", "cfg"), act("cfg", "dir"), act("dir"), act("other")]
    ids = [a.id for a in sequence(actions)]
    assert sorted(ids) == sorted(a.id for a in actions)
    assert ids.index("t:dir") < ids.index("t:cfg") < ids.index("t:app")


def test_dependencies_outside_the_plan_are_already_satisfied() -> None:
    """A dependency on an action not in the plan (applied before) does not block, nor does a self-loop."""
    actions = [act("a", "not-planned"), act("b", "b")]
    assert {a.id for a in sequence(actions)} == {"t:a", "t:b"}


def test_independent_actions_keep_graphlibs_order() -> None:
    """Actions with no edge among them (outside dependencies and self-loops do not count) come in the order
    graphlib gives them: as added, an id repeated keeping its first place and its last action."""
    import graphlib

    twice = Action(id="t:a", reconciler="t", kind="delete", target="a", summary="delete a")
    actions = [act("c", "not-planned"), act("a"), act("b", "b"), twice, act("d")]
    sorter: graphlib.TopologicalSorter[str] = graphlib.TopologicalSorter()
    for a in actions:
        sorter.add(a.id)
    by_id = {a.id: a for a in actions}
    assert sequence(actions) == [by_id[i] for i in sorter.static_order()]
    assert [a.id for a in sequence(actions)] == ["t:c", "t:a", "t:b", "t:d"]
    assert sequence(actions)[1] is twice


def test_a_cycle_is_an_input_error_naming_it() -> None:
    """A cycle raises CycleError whose message names every member, closing the loop."""
    with pytest.raises(CycleError) as err:
        order([act("a", "c"), act("b", "a"), act("c", "b"), act("d")])
    what = err.value.what
    assert what.startswith("dependency cycle between actions: ")
    path = what.split(": ", 1)[1].split(" -> ")
    assert set(path) == {"t:a", "t:b", "t:c"} and path[0] == path[-1] and len(path) == 4
    assert "depends_on" in err.value.hint


def test_an_empty_plan_executes_nothing(rec: Recorder, index: Index) -> None:
    """No actions: an ok result and no checkpoints."""
    result = _executor(rec, index).execute("run", [], CTX)
    assert result.ok and result.completed == ()
    assert index.run_actions("run") == []


# -- execution ------------------------------------------------------------------------------------------
def test_actions_run_in_dependency_order_with_checkpoints_and_inventory(rec: Recorder, index: Index) -> None:
    """A chain runs in order; each action is checkpointed done and its inventory recorded."""
    actions = [act("c", "b"), act("b", "a"), act("a")]
    result = _executor(rec, index).execute("run", actions, CTX)
    assert result.ok
    assert rec.calls == ["a", "b", "c"]
    assert [a.id for a, _ in result.completed] == ["t:a", "t:b", "t:c"]
    assert _final_status(index, "run") == {"t:a": "done", "t:b": "done", "t:c": "done"}
    assert sorted(i.resource_id for i in index.inventory("t")) == ["a", "b", "c"]
    assert json.loads(index.inventory("t")[0].data) == {"n": index.inventory("t")[0].resource_id}


def test_independent_actions_really_run_concurrently(rec: Recorder, index: Index) -> None:
    """Three independent actions all wait at one barrier: only concurrent execution lets them pass."""
    barrier = threading.Barrier(3, timeout=10)
    for name in "abc":
        rec.hooks[name] = lambda action: barrier.wait()
    result = _executor(rec, index, parallelism=4).execute("run", [act("a"), act("b"), act("c")], CTX)
    assert result.ok, result.failed
    assert sorted(rec.calls) == ["a", "b", "c"]


def test_parallelism_bounds_the_actions_in_flight(rec: Recorder, index: Index) -> None:
    """With parallelism 2 and five independent actions, exactly two are ever in flight at once."""
    gate = threading.Event()
    lock = threading.Lock()
    active = [0]
    peak = [0]

    def hold(action: Action) -> None:
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        gate.wait(timeout=10)
        with lock:
            active[0] -= 1

    for name in "abcde":
        rec.hooks[name] = hold
    actions = [act(n) for n in "abcde"]
    out: list[Any] = []
    worker = threading.Thread(
        target=lambda: out.append(_executor(rec, index, 2).execute("run", actions, CTX))
    )
    worker.start()
    wait_until(lambda: active[0] == 2)
    # Three more are ready; give them every chance to start while two hold the gate.
    deadline = time.monotonic() + 0.3
    while time.monotonic() < deadline:
        assert active[0] == 2
        time.sleep(0.01)
    gate.set()
    worker.join(timeout=20)
    assert out and out[0].ok
    assert peak[0] == 2
    assert sorted(rec.calls) == list("abcde")


def test_a_failure_stops_scheduling_of_dependents(rec: Recorder, index: Index) -> None:
    """When `a` fails, `b` (needs a) and `c` (needs b) never run; the failure is checkpointed with why."""
    rec.fail.add("a")
    result = _executor(rec, index).execute("run", [act("a"), act("b", "a"), act("c", "b")], CTX)
    assert not result.ok
    assert result.failed is not None
    failed_action, message = result.failed
    assert failed_action.id == "t:a" and "a broke" in message
    assert rec.calls == ["a"]
    assert _final_status(index, "run") == {"t:a": "failed"}
    assert index.inventory("t") == []


def test_running_siblings_finish_and_are_checkpointed_after_a_failure(rec: Recorder, index: Index) -> None:
    """An independent action already in flight when another fails completes and is recorded done."""
    sibling_started = threading.Event()

    def slow(action: Action) -> None:
        sibling_started.set()
        wait_until(lambda: "bad" in rec.calls)

    rec.hooks["slow"] = slow
    rec.hooks["bad"] = lambda action: sibling_started.wait(timeout=10)
    rec.fail.add("bad")
    actions = [act("slow"), act("bad"), act("after-slow", "slow")]
    result = _executor(rec, index).execute("run", actions, CTX)
    assert result.failed is not None and result.failed[0].id == "t:bad"
    assert [a.id for a, _ in result.completed] == ["t:slow"]
    assert "after-slow" not in rec.calls
    assert _final_status(index, "run") == {"t:slow": "done", "t:bad": "failed"}


def test_a_failure_starts_no_more_of_the_ready_actions(rec: Recorder, index: Index) -> None:
    """Twenty independent actions, parallelism 2, the first fails: besides it, only the one already in flight
    runs. (Every ready action used to be handed to the pool at once, so all twenty ran after the failure, and
    waiting on thousands of futures in flight made large plans quadratic.)"""
    failing = threading.Event()
    rec.hooks["a00"] = lambda action: failing.set()
    for i in range(1, 20):
        rec.hooks[f"a{i:02d}"] = lambda action: failing.wait(timeout=10)
    rec.fail.add("a00")
    actions = [act(f"a{i:02d}") for i in range(20)]
    result = _executor(rec, index, parallelism=2).execute("run", actions, CTX)
    assert result.failed is not None and result.failed[0].id == "t:a00"
    assert len(rec.calls) <= 2 and "a00" in rec.calls
    status = _final_status(index, "run")
    assert set(status) == {f"t:{c}" for c in rec.calls}          # `started` only for what really started
    assert status["t:a00"] == "failed"


def test_a_shutdown_starts_no_more_of_the_ready_actions(rec: Recorder, index: Index) -> None:
    """`stop` set by the first action: the run is interrupted with the rest never started or checkpointed."""
    stop = threading.Event()
    rec.hooks["a00"] = lambda action: stop.set()
    actions = [act(f"a{i:02d}") for i in range(20)]
    executor = _executor(rec, index, parallelism=1)
    executor.stop = stop
    result = executor.execute("run", actions, CTX)
    assert result.interrupted and result.ok
    assert rec.calls == ["a00"]
    assert _final_status(index, "run") == {"t:a00": "done"}


def test_a_large_plan_applies_every_action_once(rec: Recorder, index: Index) -> None:
    """3,000 actions (most independent, some chained) all run once, dependencies first, all checkpointed."""
    actions = [act(f"x{i:04d}", *([f"x{i - 1:04d}"] if i % 10 else [])) for i in range(3000)]
    result = _executor(rec, index, parallelism=4).execute("run", actions, CTX)
    assert result.ok and len(result.completed) == 3000
    assert sorted(rec.calls) == sorted(a.target for a in actions)
    position = {name: n for n, name in enumerate(rec.calls)}
    assert all(position[f"x{i - 1:04d}"] < position[f"x{i:04d}"] for i in range(3000) if i % 10)
    assert set(_final_status(index, "run").values()) == {"done"}
    assert len(index.inventory("t")) == 3000


def test_checkpoints_are_written_before_dependents_start(rec: Recorder, index: Index) -> None:
    """When a dependent starts, its dependency is already checkpointed done and in inventory."""
    seen: dict[str, Any] = {}

    def look(action: Action) -> None:
        seen["status"] = _final_status(index, "run").get("t:a")
        seen["inventory"] = [i.resource_id for i in index.inventory("t")]

    rec.hooks["b"] = look
    result = _executor(rec, index).execute("run", [act("a"), act("b", "a")], CTX)
    assert result.ok
    assert seen == {"status": "done", "inventory": ["a"]}


def test_a_delete_outcome_drops_the_inventory_item(rec: Recorder, index: Index) -> None:
    """An outcome marked removed forgets the resource in inventory."""
    index.put_inventory(InventoryItem("t", "gone", "thing", "{}"), "old")
    result = _executor(rec, index).execute("run", [act("gone", kind="delete")], CTX)
    assert result.ok
    assert index.inventory("t") == []


def test_sequence_numbers_continue_from_the_given_seq(rec: Recorder, index: Index) -> None:
    """Executions in one run (apply, then rollback) never overwrite each other's checkpoints."""
    ex = _executor(rec, index)
    first = ex.execute("run", [act("a")], CTX)
    second = ex.execute("run", [act("b")], CTX, first.next_seq)
    assert second.next_seq > first.next_seq
    assert [a.id for a, _ in index.run_actions("run")] == ["t:a", "t:b"]


# -- compensation -----------------------------------------------------------------------------------------
def test_compensations_run_in_reverse_completion_order(rec: Recorder, index: Index) -> None:
    """Only actions with a compensation are undone, last completed first, each checkpointed `compensated`."""
    done = [act("a", compensation='{"run":"undo a"}'), act("b"), act("c", compensation='{"run":"undo c"}')]
    seq, errors = _executor(rec, index).compensate("run", done, CTX, 10)
    assert errors == []
    assert rec.calls == ["undo c", "undo a"]
    assert seq == 12
    assert [(a.id, s) for a, s in index.run_actions("run")] == [
        ("t:c#compensate", "compensated"),
        ("t:a#compensate", "compensated"),
    ]


def test_a_failing_compensation_is_recorded_and_the_rest_still_run(rec: Recorder, index: Index) -> None:
    """One compensation failing does not stop the others; the error names the action."""
    rec.fail_compensation.add("b")
    done = [act("a", compensation='{"run":"x"}'), act("b", compensation='{"run":"y"}')]
    _, errors = _executor(rec, index).compensate("run", done, CTX, 0)
    assert rec.calls == ["undo b", "undo a"]
    assert len(errors) == 1 and errors[0].startswith("t:b: ") and "cannot undo b" in errors[0]
    assert _final_status(index, "run") == {"t:b#compensate": "failed", "t:a#compensate": "compensated"}
