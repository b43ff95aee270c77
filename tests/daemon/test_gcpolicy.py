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
