"""After a run, the daemon's long-lived objects are frozen out of the garbage collector (so the next run's
collections walk only what it allocates), and nothing leaks: garbage cycles frozen before are collected."""

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


def test_a_run_freezes_survivors_and_frees_cycles_frozen_before(tmp_path: Path, evaluator: Evaluator) -> None:
    """A cycle frozen and dropped before a run is freed once the run's hooks are done, and the objects alive
    then are frozen (the collector skips them until the next run's settle)."""
    repo = WorkRepo(tmp_path / "work")
    repo.commit({"infra/a.ncl": infra_file('    a = { kind = \'file, path = "a.conf", content = "a\\n" },')})
    stack = Stack(tmp_path, repo.path, evaluator=evaluator)
    try:
        node = _Node()
        gone = weakref.ref(node)
        gc.freeze()                       # as a previous settle left it: the cycle is out of the collector's reach
        del node
        gc.collect()
        assert gone() is not None         # frozen garbage survives ordinary collections
        assert stack.pipeline.run("main", trigger="test").status == "succeeded"
        stack.pipeline.wait_hooks()
        assert gone() is None
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        stack.close()
