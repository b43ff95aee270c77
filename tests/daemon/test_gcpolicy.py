"""After a run is finalized, the full garbage collection happens on the run-hooks thread, so the next run does
not meet one (a full pass over a 20,000-file daemon's objects cost a one-file run 0.3-0.5 s)."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

from daemon.nickel.evaluator import Evaluator
from tests.fixtures import Stack, WorkRepo, infra_file


class _Node:
    """An object in a reference cycle with itself (only the cycle collector frees it)."""

    def __init__(self) -> None:
        self.me = self


def test_a_finished_run_collects_in_full_off_its_path(tmp_path: Path, evaluator: Evaluator) -> None:
    """With automatic collection off, a garbage cycle dropped before a run is freed once the run's hooks are
    done, by one full collection."""
    repo = WorkRepo(tmp_path / "work")
    repo.commit({"infra/a.ncl": infra_file('    a = { kind = \'file, path = "a.conf", content = "a\\n" },')})
    stack = Stack(tmp_path, repo.path, evaluator=evaluator)
    gc.disable()                          # only explicit collections: the settle's is the one counted
    try:
        node = _Node()
        gone = weakref.ref(node)
        del node
        full = gc.get_stats()[2]["collections"]
        result = stack.pipeline.run("main", trigger="test")
        stack.pipeline.wait_hooks()
        assert result.status == "succeeded"
        assert gone() is None
        assert gc.get_stats()[2]["collections"] == full + 1
    finally:
        gc.enable()
        stack.close()


def test_a_pause_turns_the_collector_off_and_back_on_after_the_last_one() -> None:
    """Nested pauses (a plan's load inside the plan) leave the collector off until the outer one ends, even when
    the stage raises; a collector that was off before stays off."""
    from daemon.run.gcpolicy import paused

    assert gc.isenabled()
    try:
        with paused():
            assert not gc.isenabled()
            try:
                with paused():
                    raise RuntimeError("a failing load")
            except RuntimeError:
                pass
            assert not gc.isenabled()     # the outer stage is still running
        assert gc.isenabled()
        gc.disable()
        with paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_a_plan_runs_without_automatic_collection_and_restores_it(tmp_path: Path, evaluator: Evaluator) -> None:
    """The collector is off while a revision loads and plans (its passes found nothing to free there) and on
    again once the plan is made."""
    repo = WorkRepo(tmp_path / "work")
    repo.commit({"infra/a.ncl": infra_file('    a = { kind = \'file, path = "a.conf", content = "a\\n" },')})
    stack = Stack(tmp_path, repo.path, evaluator=evaluator)
    seen: list[bool] = []
    rec = stack.pipeline.reconcilers["infra"]
    observe = rec.observe

    def observing(*args: object) -> object:
        seen.append(gc.isenabled())
        return observe(*args)  # type: ignore[arg-type]

    try:
        rec.observe = observing  # type: ignore[method-assign, assignment]  # records the collector's state; observes as ever
        report = stack.pipeline.plan("main")
        assert [a.target for a in report.actions] == ["a"]
        assert seen == [False]
        assert gc.isenabled()
    finally:
        stack.close()
