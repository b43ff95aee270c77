"""The Nickel evaluator's start-up work: the worker can be started ahead of the first evaluation.

Speed is measured by bench/ (cli.py, load_plan.py); these tests check the mechanism, not a timing.
"""

from __future__ import annotations

from pathlib import Path

from daemon.nickel import Evaluator
from daemon.source import GitSource
from tests.fixtures import WorkRepo, infra, resource

INFRA = '(import "infra.ncl").Config'


def test_prestart_runs_the_worker_before_any_evaluation_and_it_serves_the_first(
        repo: WorkRepo, tmp_path: Path) -> None:
    """With prestart the worker process exists right after construction, and the first evaluation is answered
    by that same process (no second start-up)."""
    ev = Evaluator(tmp_path / "cache", timeout=10.0, prestart=True)
    try:
        proc = ev._workers[0].proc
        assert proc is not None and proc.poll() is None
        repo.commit({"infra/a.ncl": infra(resource("a", "file", path="a", content="x"))})
        snap = GitSource(str(repo.path), "main", tmp_path / "data").snapshot("main")
        result = ev.evaluate(snap, ["infra/a.ncl"], INFRA)
        assert result.problems == ()
        assert result.values["infra/a.ncl"]["resources"]["a"]["content"] == "x"
        assert ev._workers[0].proc is proc and proc.poll() is None
    finally:
        ev.close()
    assert proc.poll() is not None   # close() stops a prestarted worker like any other


def test_without_prestart_no_worker_runs_until_needed(tmp_path: Path) -> None:
    """The default stays lazy: an evaluator that is never asked starts no process."""
    ev = Evaluator(tmp_path / "cache")
    try:
        assert all(w.proc is None for w in ev._workers)
    finally:
        ev.close()
