"""An incremental run (what a commit triggers in the daemon) gives exactly what a full run gives: the same
outcome, plan, admission, recorded rows, inventory and host files, over commits that add, modify, delete and
rename files, move a resource between files, break and fix references across files, change a template or
stratum.ncl, and after a run that failed and rolled back (nothing carried from it).

Two pipelines read the same repository, each with its own index and root: one runs every commit with
`incremental=True`, the other with the full path. Drift on the host is left out on purpose: an incremental run
leaves unchanged resources to the periodic drift check (tests/daemon/test_incremental.py shows that split).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from daemon.nickel.evaluator import Evaluator
from tests.fixtures import Stack, WorkRepo, infra_file


def _file(i: int, tag: str = "v0", extra: str = "") -> str:
    return infra_file(f'    r{i:02d} = {{ kind = \'file, path = "d{i % 3}/f{i:02d}.conf", content = "{tag} {i}\\n"'
                      f'{extra} }},')


def _host(root: Path) -> dict[str, tuple[str, str]]:
    """Every file under the root: path -> (content, mode)."""
    out: dict[str, tuple[str, str]] = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            p = Path(dirpath) / name
            out[str(p.relative_to(root))] = (p.read_text(errors="replace"), oct(p.stat().st_mode & 0o777))
    return out


def _record(stack: Stack, run_id: str, revision: str) -> dict[str, Any]:
    """What the index recorded of a run and its revision (times and run ids left out)."""
    q = stack.index.query
    plan = json.loads(q("SELECT plan FROM runs WHERE id = ?", [run_id])[0][0])
    return {
        "run": q("SELECT revision, status, message, problems FROM runs WHERE id = ?", [run_id]),
        "plan": plan,
        "actions": q("SELECT seq, action_id, kind, target, summary, status, message, action FROM actions "
                     "WHERE run_id = ? ORDER BY seq", [run_id]),
        "resources": q("SELECT * FROM resources WHERE revision = ? ORDER BY ALL", [revision]),
        "changed": q("SELECT * FROM changed_files WHERE revision = ? ORDER BY ALL", [revision]),
        "inventory": q("SELECT reconciler, resource_id, kind, data, revision FROM inventory ORDER BY ALL"),
        "state": q("SELECT * FROM state WHERE key LIKE 'last_%' ORDER BY ALL"),
        "revision": q("SELECT status FROM revisions WHERE id = ?", [revision]),
    }


class Twins:
    """Two pipelines over one repository: `inc` runs incrementally, `full` never does."""

    def __init__(self, tmp: Path, repo: WorkRepo, evaluator: Evaluator) -> None:
        self.repo = repo
        self.inc = Stack(tmp / "inc", repo.path, evaluator=evaluator)
        self.full = Stack(tmp / "full", repo.path, evaluator=evaluator)
        self.full.pipeline.carry_forward = False     # the reference: nothing carried, every load in full
        self.full.infra.load_carry = None
        self.load_notes: list[str] = []       # how each run of `inc` loaded infra (loadcarry.py)

    def step(self, files: dict[str, str | None] | None = None, *, git_mv: tuple[str, str] | None = None,
             carried: bool | None = None) -> tuple[str, str]:
        """Commit, run both pipelines, assert they agree; returns (status, carry note of the incremental run)."""
        if git_mv is not None:
            from tests.fixtures import git
            git(self.repo.path, "mv", *git_mv)
        rev = self.repo.commit(files)
        a = self.inc.pipeline.run(rev, trigger="test", incremental=True)
        b = self.full.pipeline.run(rev, trigger="test")
        note = self.inc.pipeline.carry_note
        assert self.inc.infra.load_carry is not None
        self.load_notes.append(self.inc.infra.load_carry.note)
        assert (a.status, a.message, a.problems, a.actions) == (b.status, b.message, b.problems, b.actions), note
        ra, rb = _record(self.inc, a.run_id, rev), _record(self.full, b.run_id, rev)
        for key in ra:
            assert ra[key] == rb[key], f"{key} differs ({note})"
        assert _host(self.inc.root) == _host(self.full.root)
        if carried is not None:
            assert note.startswith("carried") == carried, note
        return a.status, note

    def close(self) -> None:
        self.inc.close()
        self.full.close()


def test_incremental_runs_record_what_full_runs_record(tmp_path: Path, evaluator: Evaluator) -> None:
    """Over a sequence of commits of every shape, the incremental pipeline and the full one agree on outcome,
    plan, records, inventory and host files; rows are carried forward except right after a run that did not land."""
    repo = WorkRepo(tmp_path / "work")
    files: dict[str, str | None] = {f"infra/d{i % 3}/f{i:02d}.ncl": _file(i) for i in range(12)}
    files["infra/dirs.ncl"] = infra_file('    top = { kind = \'directory, path = "d0", mode = "0755" },')
    files["templates/t.j2"] = "hello {{ who }}\n"
    files["infra/tpl.ncl"] = infra_file(
        '    tpl = { kind = \'file, path = "t/out.conf", template = "templates/t.j2", vars = { who = "a" } },')
    repo.commit(files, "start")
    twins = Twins(tmp_path, repo, evaluator)
    try:
        from tests.fixtures import git
        first = twins.inc.pipeline.run(git(repo.path, "rev-parse", "HEAD"), trigger="test", incremental=True)
        second = twins.full.pipeline.run(git(repo.path, "rev-parse", "HEAD"), trigger="test")
        assert first.status == second.status == "succeeded"
        # modify one file; add one; delete one
        assert twins.step({"infra/d1/f01.ncl": _file(1, "v1")}, carried=True)[0] == "succeeded"
        assert twins.step({"infra/d0/f12.ncl": _file(12)}, carried=True)[0] == "succeeded"
        assert twins.step({"infra/d2/f02.ncl": None}, carried=True)[0] == "succeeded"
        # rename a file (same content: its resources' source moves, nothing on the host changes)
        assert twins.step(git_mv=("infra/d1/f04.ncl", "infra/d1/g04.ncl"), carried=True)[0] == "succeeded"
        # a dependency across files: r05 depends on r06 (another file); then r06 is deleted (rejected), restored
        assert twins.step({"infra/d2/f05.ncl": _file(5, extra=', depends_on = ["r06"]')}, carried=True)[0] \
            == "succeeded"
        assert twins.step({"infra/d0/f06.ncl": None})[0] == "rejected"
        assert twins.step({"infra/d0/f06.ncl": _file(6, "v2")})[0] == "succeeded"
        # a resource moved from one file to another in one commit; then a duplicate id (rejected), fixed
        assert twins.step({"infra/d1/f07.ncl": None, "infra/d0/f09.ncl": infra_file(
            '    r09 = { kind = \'file, path = "d0/f09.conf", content = "v0 9\\n" },\n'
            '    r07 = { kind = \'file, path = "d1/f07.conf", content = "v0 7\\n" },')}, carried=True)[0] \
            == "succeeded"
        assert twins.step({"infra/d1/f10.ncl": _file(10, extra="") .replace("r10", "r09")})[0] == "rejected"
        assert twins.step({"infra/d1/f10.ncl": _file(10, "v3")})[0] == "succeeded"
        # two resources managing one path (rejected), fixed
        assert twins.step({"infra/d2/f11.ncl": _file(11).replace('"d2/f11.conf"', '"d0/f00.conf"')})[0] \
            == "rejected"
        assert twins.step({"infra/d2/f11.ncl": _file(11, "v4")})[0] == "succeeded"
        # a template another file renders changes: not a plain infra file, the full path
        assert twins.step({"templates/t.j2": "bye {{ who }}\n"}, carried=True)[0] == "succeeded"
        # repo settings change: the full path
        assert twins.step({"stratum.ncl": "{ infra = { parallelism = 2 } }\n"}, carried=True)[0] == "succeeded"
        # a failing command rolls back; the next commit is not carried from the run that did not land
        assert twins.step({"infra/cmd.ncl": infra_file('    boom = { kind = \'command, run = "exit 3" },')})[0] \
            == "rolled_back"
        assert twins.step({"infra/cmd.ncl": None, "infra/d2/f08.ncl": _file(8, "v5")}, carried=False)[0] \
            == "succeeded"
        assert twins.step({"infra/d2/f08.ncl": _file(8, "v6")}, carried=True)[0] == "succeeded"
        # how `inc` loaded infra at each step: patched from the last problem-free load, or in full (and why)
        assert [n.split(":")[0] for n in twins.load_notes] == [
            "patched", "patched", "patched", "patched", "patched", "full", "full", "patched", "full", "full",
            "full", "full", "patched", "patched", "patched", "patched", "patched"]
        assert "template" not in twins.load_notes[12] and twins.load_notes[12].startswith("patched: 1 file(s)")
        assert twins.load_notes[5] == "full: a resource depends on r06, which went away"
    finally:
        twins.close()
