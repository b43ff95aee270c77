"""The Nickel evaluator's start-up work: the worker can be started ahead of the first evaluation, and values
evaluated by an earlier process are reused from disk.

Speed is measured by bench/ (cli.py, load_plan.py); these tests check the mechanism, not a timing.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from daemon.git.source import GitSource, Snapshot
from daemon.nickel.cache import DiskCache
from daemon.nickel.evaluator import Evaluator
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


# -- values kept on disk across processes -------------------------------------------------------------
def _snap(repo: WorkRepo, tmp: Path, files: dict[str, str | bytes | None]) -> Snapshot:
    repo.commit(files)
    return GitSource(str(repo.path), "main", tmp / "data").snapshot("main")


def test_a_new_evaluator_on_the_same_cache_reuses_values_without_a_worker(repo: WorkRepo, tmp_path: Path) -> None:
    """A second evaluator (a new `stratum` process) gets unchanged files' values from disk: no evaluation and
    no worker process at all."""
    snap = _snap(repo, tmp_path, {"infra/a.ncl": infra(resource("a", "file", path="a", content="x"))})
    first = Evaluator(tmp_path / "cache", timeout=10.0)
    try:
        assert first.evaluate(snap, ["infra/a.ncl"], INFRA).problems == ()
        assert first.stats["evaluations"] == 1
    finally:
        first.close()
    second = Evaluator(tmp_path / "cache", timeout=10.0)
    try:
        result = second.evaluate(snap, ["infra/a.ncl"], INFRA)
        assert result.values["infra/a.ncl"]["resources"]["a"]["prune"] is True      # the contract's default
        assert second.stats == {"evaluations": 0, "cache_hits": 0} and second.disk_hits == 1
        assert all(w.proc is None for w in second._workers)
    finally:
        second.close()


def test_a_changed_file_or_contract_is_evaluated_again(repo: WorkRepo, tmp_path: Path) -> None:
    """The disk cache never answers for another blob, another imported file or another contract."""
    ev = Evaluator(tmp_path / "cache", timeout=10.0)
    try:
        snap1 = _snap(repo, tmp_path, {"infra/a.ncl": 'let c = import "c.ncl" in '
                                                      + infra(resource("a", "file", path="a", content="x")),
                                       "infra/c.ncl": "1"})
        ev.evaluate(snap1, ["infra/a.ncl"], INFRA)
        snap2 = _snap(repo, tmp_path, {"infra/c.ncl": "2"})            # only the imported file changed
        fresh = Evaluator(tmp_path / "cache", timeout=10.0)
        try:
            fresh.evaluate(snap2, ["infra/a.ncl"], INFRA)
            assert fresh.stats["evaluations"] == 1 and fresh.disk_hits == 0
            fresh.evaluate(snap2, ["infra/a.ncl"], None)               # same file, no contract
            assert fresh.stats["evaluations"] == 2
        finally:
            fresh.close()
    finally:
        ev.close()


def test_a_damaged_cache_entry_is_a_miss_and_is_repaired(repo: WorkRepo, tmp_path: Path) -> None:
    """A truncated value in the cache costs an evaluation, never an error or a wrong value."""
    snap = _snap(repo, tmp_path, {"infra/a.ncl": infra(resource("a", "file", path="a", content="x"))})
    ev = Evaluator(tmp_path / "cache", timeout=10.0)
    try:
        result = ev.evaluate(snap, ["infra/a.ncl"], INFRA)
    finally:
        ev.close()
    (key,) = result.keys.values()
    with sqlite3.connect(tmp_path / "cache" / "values" / "values.sqlite") as con:
        con.execute("UPDATE v SET value = ?", ('{"value": {"resources"',))
    again = Evaluator(tmp_path / "cache", timeout=10.0)
    try:
        result = again.evaluate(snap, ["infra/a.ncl"], INFRA)
        assert result.values["infra/a.ncl"]["resources"]["a"]["content"] == "x"
        assert again.stats["evaluations"] == 1
        assert DiskCache(tmp_path / "cache" / "values").get(key) == (True, result.values["infra/a.ncl"])
    finally:
        again.close()


def test_a_cache_file_that_is_no_database_is_replaced(repo: WorkRepo, tmp_path: Path) -> None:
    """Garbage in place of the cache file: the evaluation goes on, and the file is rebuilt for next time."""
    snap = _snap(repo, tmp_path, {"infra/a.ncl": infra(resource("a", "file", path="a", content="x"))})
    (tmp_path / "cache" / "values").mkdir(parents=True)
    (tmp_path / "cache" / "values" / "values.sqlite").write_bytes(b"not a database at all, " * 100)
    ev = Evaluator(tmp_path / "cache", timeout=10.0)
    try:
        result = ev.evaluate(snap, ["infra/a.ncl"], INFRA)
        assert result.problems == () and ev.stats["evaluations"] == 1
    finally:
        ev.close()
    again = Evaluator(tmp_path / "cache", timeout=10.0)
    try:
        assert again.evaluate(snap, ["infra/a.ncl"], INFRA).values == result.values
        assert again.stats["evaluations"] == 0 and again.disk_hits == 1
    finally:
        again.close()


def test_many_values_are_read_and_written_in_batches(tmp_path: Path) -> None:
    """1,200 values (over one SELECT's parameter batch) written at once all come back from a new cache."""
    cache = DiskCache(tmp_path / "values")
    cache.put_many((f"k{i}", {"i": i}) for i in range(1200))
    cache.close()
    reopened = DiskCache(tmp_path / "values")
    found = reopened.get_many([f"k{i}" for i in range(1300)])
    assert found == {f"k{i}": {"i": i} for i in range(1200)}
    assert list((tmp_path / "values").glob("*.json")) == []          # one file, not one per value
    reopened.close()


def test_errors_are_not_kept(repo: WorkRepo, tmp_path: Path) -> None:
    """A file that fails is evaluated again next time, so its error is always reported in full."""
    snap = _snap(repo, tmp_path, {"infra/bad.ncl": infra(resource("a", "file", path="a", content=1))})
    for _ in range(2):
        ev = Evaluator(tmp_path / "cache", timeout=10.0)
        try:
            assert ev.evaluate(snap, ["infra/bad.ncl"], INFRA).problems
            assert ev.stats["evaluations"] == 1
        finally:
            ev.close()


def test_the_disk_cache_is_bounded(tmp_path: Path) -> None:
    """Beyond max_entries the oldest entries are removed (down to 80 %) when a cache is opened."""
    cache = DiskCache(tmp_path / "values", max_entries=10)
    for i in range(15):
        cache.put(f"k{i:02}", {"i": i})
    cache.close()
    reopened = DiskCache(tmp_path / "values", max_entries=10)
    kept = sorted(reopened.get_many([f"k{i:02}" for i in range(15)]))
    assert kept == [f"k{i:02}" for i in range(7, 15)]
    assert reopened.get("k14") == (True, {"i": 14})
    reopened.close()


# -- one batch over both cores -------------------------------------------------------------------------
def test_a_batch_is_cut_into_runs_of_equal_bytes_one_per_worker_at_least() -> None:
    """Fifty equal files over two workers are two runs of 25 (one 50-file run left a core idle); runs keep the
    files' order, cover every file once and never exceed _CHUNK files; a small batch stays one run."""
    from daemon.nickel.evaluator import _CHUNK, split_chunks

    paths = [f"infra/f{i:03d}.ncl" for i in range(50)]
    assert [len(c) for c in split_chunks(paths, dict.fromkeys(paths, 4_000), 2)] == [25, 25]
    one_big = {**dict.fromkeys(paths, 1_000), paths[0]: 49_000}
    assert [len(c) for c in split_chunks(paths, one_big, 2)] == [1, 49]        # cut by bytes, not count
    assert split_chunks(paths[:10], dict.fromkeys(paths, 100), 2) == [paths[:10]]   # 1 KB: not worth a worker
    assert split_chunks(paths[:3], dict.fromkeys(paths, 100_000), 2) == [paths[:3]]  # under 8 files
    many = [f"infra/g{i:05d}.ncl" for i in range(20_000)]
    chunks = split_chunks(many, dict.fromkeys(many, 100), 2)
    assert [p for c in chunks for p in c] == many and max(map(len, chunks)) <= _CHUNK
    assert split_chunks([], {}, 2) == []


def test_runs_are_few_but_bounded_in_bytes() -> None:
    """20,000 tiny files are 20 runs, not 79 (each run costs ~45 ms of its own); a batch of big files is cut
    at about _CHUNK_BYTES a run, so no run nears its deadline however few files it holds."""
    from daemon.nickel.evaluator import _CHUNK_BYTES, split_chunks

    many = [f"infra/g{i:05d}.ncl" for i in range(20_000)]
    assert len(split_chunks(many, dict.fromkeys(many, 130), 2)) == 20
    big = [f"infra/b{i:02d}.ncl" for i in range(40)]
    chunks = split_chunks(big, dict.fromkeys(big, 200_000), 2)
    assert [p for c in chunks for p in c] == big
    assert len(chunks) == 8 and max(len(c) for c in chunks) * 200_000 <= _CHUNK_BYTES + 200_000


def test_a_big_batch_of_few_files_is_evaluated_by_both_workers(repo: WorkRepo, tmp_path: Path) -> None:
    """Ten files of 60 resources each (one evaluate call) start both workers, and every value comes back."""
    files = {f"infra/f{i}.ncl": infra(*(resource(f"f{i}-r{r}", "file", path=f"f{i}/r{r}", content="x" * 40)
                                        for r in range(60))) for i in range(10)}
    snap = _snap(repo, tmp_path, dict(files))
    ev = Evaluator(tmp_path / "cache", timeout=30.0, workers=2)
    try:
        result = ev.evaluate(snap, sorted(files), INFRA)
        assert result.problems == ()
        assert sum(len(v["resources"]) for v in result.values.values()) == 600
        assert all(w.proc is not None and w.proc.poll() is None for w in ev._workers)
        assert ev.stats["evaluations"] == 2
    finally:
        ev.close()


# -- a throwaway cache directory keeps nothing ------------------------------------------------------------
def test_an_evaluator_that_keeps_no_values_writes_no_cache_file(repo: WorkRepo, tmp_path: Path) -> None:
    """keep_values=False evaluates as usual but makes no SQLite file (created, switched to WAL and filled only
    to be deleted, for `stratum validate`); a later evaluator on that directory finds nothing to reuse."""
    snap = _snap(repo, tmp_path, {"infra/a.ncl": infra(resource("a", "file", path="a", content="x"))})
    ev = Evaluator(tmp_path / "cache", timeout=10.0, keep_values=False)
    try:
        assert ev.evaluate(snap, ["infra/a.ncl"], INFRA).values["infra/a.ncl"]["resources"]["a"]["content"] == "x"
    finally:
        ev.close()
    assert not (tmp_path / "cache" / "values").exists()
    again = Evaluator(tmp_path / "cache", timeout=10.0)
    try:
        assert again.evaluate(snap, ["infra/a.ncl"], INFRA).problems == ()
        assert again.disk_hits == 0 and again.stats["evaluations"] == 1
    finally:
        again.close()


def test_validate_keeps_no_values_in_its_temporary_directory(repo: WorkRepo, tmp_path: Path) -> None:
    """`stratum validate` (validate_snapshot) checks the revision with an evaluator in its temporary directory
    and writes no value cache there."""
    from daemon.cli.validate import validate_snapshot
    from daemon.settings import Settings

    repo.commit({"infra/a.ncl": infra(resource("a", "file", path="a", content="x"))})
    settings = Settings(repo=str(repo.path), data_dir=tmp_path / "data", root=tmp_path / "root")
    source = GitSource(str(repo.path), "main", settings.data_dir)
    assert validate_snapshot(source, "main", tmp_path / "tmp", settings) == []
    assert not (tmp_path / "tmp" / "nickel-cache" / "values").exists()
