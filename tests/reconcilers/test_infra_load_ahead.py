"""Infra files loaded while Nickel still evaluates the others (issue 10: cold load + plan of 5,000 resources).

The evaluator tells each value as soon as its run is back (`on_value`), in the caller's thread, and cuts a big
batch into two runs per worker so that the load's own work on the first runs overlaps the second ones. What a
load returns must not depend on it: the reference here is the same evaluator with the hint dropped (a plain
wrapper, since the behaviour compared is the caller's, not Nickel's). Real repositories and worker processes.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from daemon.git.source import GitSource
from daemon.nickel.evaluator import _AHEAD_BYTES, Evaluator, runs_per_worker, split_chunks
from reconcilers.infra.load import load_infra
from reconcilers.infra.model import InfraDesired
from tests.fixtures import Raw, WorkRepo, infra, resource


@pytest.fixture
def evaluator(tmp_path: Path) -> Iterator[Evaluator]:
    """Two workers whatever the host's cores, and a fresh cache: every value comes from a run."""
    ev = Evaluator(tmp_path / "nickel-cache", workers=2, keep_values=False)
    yield ev
    ev.close()


class NoHint:
    """The evaluator without `on_value`: every value arrives with the result, as before the hint existed."""

    def __init__(self, inner: Evaluator) -> None:
        self.inner = inner

    def evaluate(self, snap: Any, paths: Sequence[str], contract: str | None = None, entries: Sequence[Any] = (),
                 on_value: Any = None) -> Any:
        return self.inner.evaluate(snap, paths, contract, entries)


def _big_repo(repo: WorkRepo) -> dict[str, str]:
    """Over _AHEAD_BYTES of infra in 24 files (so 4 runs), with a template, a file the fast pass does not
    vouch for (it imports), a file Nickel rejects and a duplicate id across files."""
    files = {f"infra/f{i:02d}.ncl": infra(*(resource(f"f{i}-r{j}", "file", path=f"f{i}/r{j}",
                                                     content=f"{i}-{j} " + "x" * 300) for j in range(40)))
             for i in range(20)}
    files["templates/t.j2"] = "port={{ port }}\n"
    files["infra/tpl.ncl"] = infra(resource("tpl", "file", path="tpl.conf", template="templates/t.j2",
                                            vars=Raw("{ port = 80 }")))
    files["infra/lib.ncl"] = '{ mode = "0600" }\n'
    files["infra/imports.ncl"] = 'let lib = import "lib.ncl" in\n' + infra(
        resource("imp", "file", path="imp", content="i", mode=Raw("lib.mode")))
    files["infra/bad.ncl"] = infra(resource("bad", "file", path="bad", content=Raw("42")))
    files["infra/dup.ncl"] = infra(resource("f0-r0", "file", path="dup", content="d"))
    repo.commit(files)
    assert sum(len(t) for p, t in files.items() if p.startswith("infra/")) > _AHEAD_BYTES
    return files


def test_a_load_with_values_told_early_equals_one_without(tmp_path: Path, evaluator: Evaluator) -> None:
    """Resources, their lines and specs, and every problem (Nickel's, duplicates) are the same either way."""
    repo = WorkRepo(tmp_path / "repo")
    _big_repo(repo)
    snap = GitSource(str(repo.path), "main", tmp_path / "data").snapshot("main")
    told: list[str] = []
    inner_evaluate = evaluator.evaluate

    def counting(*args: Any, **kwargs: Any) -> Any:
        hint = kwargs.get("on_value")
        if hint is not None:
            def noted(path: str, key: str, value: Any) -> None:
                told.append(path)
                hint(path, key, value)
            kwargs["on_value"] = noted
        return inner_evaluate(*args, **kwargs)

    evaluator.evaluate = counting  # type: ignore[method-assign]
    early = load_infra(snap, evaluator)
    evaluator.evaluate = inner_evaluate  # type: ignore[method-assign]
    other = Evaluator(tmp_path / "nickel-cache-2", workers=2, keep_values=False)
    try:
        reference: InfraDesired = load_infra(snap, NoHint(other))  # type: ignore[arg-type]
    finally:
        other.close()
    assert len(told) >= 20                               # the load did receive values early
    assert early.resources == reference.resources and len(early.resources) == 20 * 40 + 2
    assert early.problems == reference.problems
    messages = " ".join(p.message for p in early.problems)
    assert "duplicate resource id 'f0-r0'" in messages and any(p.path == "infra/bad.ncl" for p in early.problems)
    assert early.resources["tpl"].fields["content"] == "port=80\n"
    assert early.resources["imp"].fields["mode"] == "0600"


def test_values_are_told_once_in_the_calling_thread_and_never_from_a_cache(tmp_path: Path,
                                                                           evaluator: Evaluator) -> None:
    """Each value of a run is told once, in the caller's thread, as the same object the result holds; a big
    batch takes two runs per worker when a core is free for the caller; an evaluation answered from the cache
    tells nothing."""
    repo = WorkRepo(tmp_path / "repo")
    files = _big_repo(repo)
    snap = GitSource(str(repo.path), "main", tmp_path / "data").snapshot("main")
    paths = sorted(p for p in files if p.startswith("infra/f"))
    told: list[tuple[str, str, Any, int]] = []
    result = evaluator.evaluate(snap, paths, '(import "infra.ncl").Config',
                                on_value=lambda p, k, v: told.append((p, k, v, threading.get_ident())))
    assert result.problems == ()
    assert sorted(p for p, _, _, _ in told) == paths                          # each once
    assert all(result.values[p] is v and result.keys[p] == k for p, k, v, _ in told)
    assert {t for _, _, _, t in told} == {threading.get_ident()}
    # Two runs per worker when a core is left for the caller, one each on a host of two cores.
    assert evaluator.stats["evaluations"] == 2 * runs_per_worker(2)
    again: list[str] = []
    assert evaluator.evaluate(snap, paths, '(import "infra.ncl").Config',
                              on_value=lambda p, k, v: again.append(p)).values == result.values
    assert again == []


def test_a_single_worker_tells_values_run_by_run_too(tmp_path: Path) -> None:
    """One worker (a one-core host, or a second core left for the caller): the runs are made in the calling
    thread, and each one's values are told before the next run starts."""
    repo = WorkRepo(tmp_path / "repo")
    files = _big_repo(repo)
    snap = GitSource(str(repo.path), "main", tmp_path / "data").snapshot("main")
    paths = sorted(p for p in files if p.startswith("infra/f"))
    ev = Evaluator(tmp_path / "nickel-cache", workers=1, keep_values=False)
    runs_seen: list[int] = []
    try:
        result = ev.evaluate(snap, paths, '(import "infra.ncl").Config',
                             on_value=lambda p, k, v: runs_seen.append(ev.stats["evaluations"]))
    finally:
        ev.close()
    assert result.problems == () and len(runs_seen) == len(paths)
    assert ev.stats["evaluations"] == runs_per_worker(1)
    if runs_per_worker(1) == 2:                  # the first run's values were told before the second run
        assert runs_seen[0] == 1 and runs_seen[-1] == 2


def test_two_runs_per_worker_only_for_a_batch_worth_it() -> None:
    """`runs_per_worker` cuts a batch of _AHEAD_BYTES or more into that many runs per worker, in order; a
    smaller one keeps one run per worker (each run costs ~40 ms of its own)."""
    paths = [f"f{i:02d}.ncl" for i in range(40)]
    big = dict.fromkeys(paths, _AHEAD_BYTES // 20)
    chunks = split_chunks(paths, big, 2, runs_per_worker=2)
    assert [len(c) for c in chunks] == [10, 10, 10, 10] and [p for c in chunks for p in c] == paths
    assert [len(c) for c in split_chunks(paths, big, 2)] == [20, 20]
    small = dict.fromkeys(paths, 2_000)
    assert [len(c) for c in split_chunks(paths, small, 2, runs_per_worker=2)] == [20, 20]
