"""`runtime.build` starts the Nickel workers first (issue 10: cold load + plan), so their start-up overlaps the
index and the reconcilers; the first evaluation uses those same processes, and nothing outlives a build that
failed or a runtime that was closed. Real git repositories, real worker processes read through /proc."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from daemon.run.runtime import build
from daemon.settings import Settings
from reconcilers.errors import SourceError
from tests.fixtures import WorkRepo, infra, resource


def _children() -> set[int]:
    out: set[int] = set()
    for task in os.listdir(f"/proc/{os.getpid()}/task"):
        try:
            out |= {int(c) for c in Path(f"/proc/{os.getpid()}/task/{task}/children").read_text().split()}
        except OSError:
            continue
    return out


def test_build_starts_every_worker_and_the_first_plan_uses_them(repo: WorkRepo, tmp_path: Path) -> None:
    """Right after build, before any evaluation, each worker process runs; a plan that splits its batch over
    both is answered by those processes (no second start-up); close() ends them."""
    files = {f"infra/f{i}.ncl": infra(*(resource(f"r{i}-{j}", "file", path=f"f{i}/{j}", content="x" * 200)
                                        for j in range(40))) for i in range(10)}
    repo.commit(files)
    before = _children()
    rt = build(Settings(repo=str(repo.path), data_dir=tmp_path / "data", root=tmp_path / "root"))
    try:
        procs = [w.proc for w in rt.evaluator._workers]
        assert len(procs) == rt.evaluator.worker_count and all(p is not None and p.poll() is None for p in procs)
        assert {p.pid for p in procs if p is not None} <= _children() - before
        report = rt.pipeline.plan(rt.source.resolve("main"))
        assert report.problems == () and len(report.actions) == 400
        assert [w.proc for w in rt.evaluator._workers] == procs          # the same processes served it
        assert rt.evaluator.stats["evaluations"] >= rt.evaluator.worker_count   # the batch was shared
    finally:
        rt.close()
    assert all(p is not None and p.poll() is not None for p in procs)
    assert _children() <= before


def test_with_values_on_disk_build_starts_only_the_first_worker(repo: WorkRepo, tmp_path: Path) -> None:
    """A data directory where an earlier process kept evaluated values (the usual `stratum plan` then `apply`):
    most files are found on disk, so only the first worker is started ahead; the plan needs no other."""
    repo.commit({"infra/a.ncl": infra(resource("a", "file", path="a", content="x"))})
    settings = Settings(repo=str(repo.path), data_dir=tmp_path / "data", root=tmp_path / "root")
    first = build(settings)
    try:
        assert first.evaluator.workers_running == first.evaluator.worker_count      # nothing on disk yet
        assert first.pipeline.plan(first.source.resolve("main")).problems == ()
    finally:
        first.close()
    again = build(settings)
    try:
        assert again.evaluator.values_on_disk and again.evaluator.workers_running == 1
        assert len(again.pipeline.plan(again.source.resolve("main")).actions) == 1
        assert again.evaluator.stats["evaluations"] == 0                          # found on disk
    finally:
        again.close()


def test_without_prestart_build_starts_no_worker(repo: WorkRepo, tmp_path: Path) -> None:
    """`prestart=False` keeps the evaluator lazy (a caller that may never evaluate)."""
    repo.commit({"infra/a.ncl": infra(resource("a", "file", path="a", content="x"))})
    rt = build(Settings(repo=str(repo.path), data_dir=tmp_path / "data", root=tmp_path / "root"), prestart=False)
    try:
        assert rt.evaluator.workers_running == 0
    finally:
        rt.close()


def test_a_build_that_fails_after_starting_the_workers_leaves_none_running(tmp_path: Path) -> None:
    """The workers start before the repository is opened: when that fails, they are stopped with it (a guard
    for the new order; before it, nothing had started yet at that point)."""
    before = _children()
    with pytest.raises(SourceError, match="does not exist"):
        build(Settings(repo=str(tmp_path / "missing"), data_dir=tmp_path / "data", root=tmp_path / "root"),
              ephemeral=True)
    assert _children() <= before
