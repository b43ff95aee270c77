"""A commit's run is incremental: it evaluates, observes and plans what the commit changed, plus cheap set
operations over the rest (issue 16 item 5: a one-file change among 20,000 files took 35 s).

Speed is measured by bench/scale_files.py; these tests check the work done (evaluator and listing counters,
actions planned), not a timing.
"""

from __future__ import annotations

from pathlib import Path

from daemon.git.source import LISTING_STATS
from tests.fixtures import Stack, WorkRepo, infra_file

FILES = 60


def _file(i: int, tag: str = "v0") -> str:
    return infra_file(f'    r{i:03d} = {{ kind = \'file, path = "d{i % 6}/f{i:03d}.conf", content = "{tag} {i}\\n" }},')


def _repo(tmp_path: Path) -> WorkRepo:
    repo = WorkRepo(tmp_path / "work")
    repo.commit({f"infra/d{i % 6}/f{i:03d}.ncl": _file(i) for i in range(FILES)}, "many files")
    return repo


def test_a_one_file_commit_evaluates_one_file_and_plans_one_action(tmp_path: Path) -> None:
    """After a first apply, a commit changing one of 60 files runs one Nickel evaluation, derives one cache
    key, lists one changed folder, and plans and applies one action."""
    repo = _repo(tmp_path)
    stack = Stack(tmp_path, repo.path)
    try:
        first = stack.pipeline.run("main", trigger="test", incremental=True)
        assert first.status == "succeeded" and len(first.actions) == FILES
        repo.commit({"infra/d1/f001.ncl": _file(1, "v1")})
        ev = stack.evaluator
        evaluations, hits, derived = ev.stats["evaluations"], ev.stats["cache_hits"], ev.keys_derived
        trees = LISTING_STATS["trees_read"]
        result = stack.pipeline.run("main", trigger="test", incremental=True)
        assert result.status == "succeeded"
        assert result.actions == (("infra:r001", "done"),)
        assert ev.stats["evaluations"] - evaluations == 1
        assert ev.stats["cache_hits"] - hits == FILES - 1
        assert ev.keys_derived - derived == 1
        # infra/ and infra/d1 are new trees; the five other folders' listings are reused
        assert LISTING_STATS["trees_read"] - trees == 2
        assert (tmp_path / "root/d1/f001.conf").read_text() == "v1 1\n"
    finally:
        stack.close()


def test_unchanged_resources_are_assumed_in_place_and_left_to_the_drift_check(tmp_path: Path) -> None:
    """An incremental run does not look at resources applied before with the same spec (a host file removed
    behind Stratum's back stays removed); a full plan reads the host and reports it."""
    repo = _repo(tmp_path)
    stack = Stack(tmp_path, repo.path)
    try:
        assert stack.pipeline.run("main", trigger="test", incremental=True).status == "succeeded"
        (tmp_path / "root/d2/f002.conf").unlink()
        rev = repo.commit({"infra/d1/f001.ncl": _file(1, "v1")})
        loaded = stack.pipeline.load(rev)
        observed = stack.infra.observe_changed(loaded.desired["infra"], stack.index.inventory())
        assert observed.assumed == {f"r{i:03d}" for i in range(FILES)} - {"r001"}
        assert set(observed.resources) == {"r001"}
        result = stack.pipeline.run(rev, trigger="test", incremental=True)
        assert result.actions == (("infra:r001", "done"),)
        assert not (tmp_path / "root/d2/f002.conf").exists()
        plan = stack.pipeline.plan(rev)
        assert [a.id for a in plan.actions] == ["infra:r002"]
    finally:
        stack.close()


def test_an_incremental_run_still_clears_strays_in_folders_of_unchanged_resources(tmp_path: Path) -> None:
    """Stray temporary files (an apply killed mid-write) are looked for in every folder Stratum writes to, not
    only those of what the commit changed: the incremental run removes one beside an unchanged file."""
    repo = _repo(tmp_path)
    stack = Stack(tmp_path, repo.path)
    try:
        assert stack.pipeline.run("main", trigger="test", incremental=True).status == "succeeded"
        stray = tmp_path / "root/d2/.f002.conf.0badc0de.stratum-tmp"
        stray.write_text("half written\n")
        rev = repo.commit({"infra/d1/f001.ncl": _file(1, "v1")})
        result = stack.pipeline.run(rev, trigger="test", incremental=True)
        assert result.status == "succeeded"
        assert sorted(a for a, _ in result.actions) == [
            "infra:r001", "infra:~tmp:d2/.f002.conf.0badc0de.stratum-tmp"]
        assert not stray.exists()
    finally:
        stack.close()
