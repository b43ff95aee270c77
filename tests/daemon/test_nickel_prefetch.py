"""Several groups of Nickel files evaluated in one run ahead of the loads (Evaluator.prefetch, the reconcilers'
`nickel_inputs`): every Nickel run pays for the standard library and its contract library again, and the
template repository asked for nine runs on every validate, plan and apply.

These tests count runs (the evaluator's `stats["evaluations"]`), real worker processes and real git repos;
the time saved is measured by bench/cli.py.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from daemon.git.source import GitSource, Snapshot
from daemon.nickel.evaluator import Evaluator
from daemon.package_data import template_dir
from daemon.run.pipeline import load_snapshot
from daemon.run.runtime import build_reconcilers
from daemon.settings import load_settings
from tests.fixtures import WorkRepo, infra, resource

INFRA = '(import "infra.ncl").Config'
SETTINGS = '(import "stratum.ncl").Settings'


def _snap(repo: WorkRepo, tmp: Path, files: dict[str, str | bytes | None]) -> Snapshot:
    repo.commit(files)
    return GitSource(str(repo.path), "main", tmp / "data").snapshot("main")


def test_groups_are_evaluated_in_one_run_and_the_evaluations_after_find_them(repo: WorkRepo,
                                                                            tmp_path: Path) -> None:
    """Two groups under two contracts: one run for both, then each group's own evaluate is a cache hit with
    the same values a run of its own gives."""
    snap = _snap(repo, tmp_path, {"infra/a.ncl": infra(resource("a", "file", path="a", content="x")),
                                  "infra/b.ncl": infra(resource("b", "file", path="b", content="y")),
                                  "stratum.ncl": "{}"})
    ev = Evaluator(tmp_path / "cache", timeout=10.0, keep_values=False)
    try:
        kept = ev.prefetch(snap, [(["infra/a.ncl", "infra/b.ncl"], INFRA), (["stratum.ncl"], SETTINGS)])
        assert kept == 3 and ev.stats["evaluations"] == 1
        infra_values = ev.evaluate(snap, ["infra/a.ncl", "infra/b.ncl"], INFRA)
        settings = ev.evaluate(snap, ["stratum.ncl"], SETTINGS)
        assert ev.stats["evaluations"] == 1 and ev.stats["cache_hits"] == 3
    finally:
        ev.close()
    alone = Evaluator(tmp_path / "cache-alone", timeout=10.0, keep_values=False)
    try:
        assert alone.evaluate(snap, ["infra/a.ncl", "infra/b.ncl"], INFRA).values == infra_values.values
        assert alone.evaluate(snap, ["stratum.ncl"], SETTINGS).values == settings.values
    finally:
        alone.close()
    assert infra_values.values["infra/a.ncl"]["resources"]["a"]["content"] == "x"


def test_a_failing_batch_keeps_nothing_and_each_group_reports_its_own_problem(repo: WorkRepo,
                                                                              tmp_path: Path) -> None:
    """One bad file fails the batch: nothing is kept (no value of the batch is trusted), and the evaluations
    after report the problem on its file, as without the prefetch."""
    snap = _snap(repo, tmp_path, {"infra/a.ncl": infra(resource("a", "file", path="a", content="x")),
                                  "infra/bad.ncl": "{ resources = 1 + \"x\" }\n",
                                  "stratum.ncl": "{}"})
    ev = Evaluator(tmp_path / "cache", timeout=10.0, keep_values=False)
    try:
        assert ev.prefetch(snap, [(["infra/a.ncl", "infra/bad.ncl"], INFRA), (["stratum.ncl"], SETTINGS)]) == 0
        result = ev.evaluate(snap, ["infra/a.ncl", "infra/bad.ncl"], INFRA)
        assert [p.path for p in result.problems] == ["infra/bad.ncl"]
        assert set(result.values) == {"infra/a.ncl"}
        assert ev.evaluate(snap, ["stratum.ncl"], SETTINGS).problems == ()
    finally:
        ev.close()


def test_one_group_or_a_known_one_is_not_run_again(repo: WorkRepo, tmp_path: Path) -> None:
    """A single group gains nothing from being asked early, and values already known are not evaluated again:
    no run in either case."""
    snap = _snap(repo, tmp_path, {"infra/a.ncl": infra(resource("a", "file", path="a", content="x")),
                                  "stratum.ncl": "{}"})
    ev = Evaluator(tmp_path / "cache", timeout=10.0, keep_values=False)
    try:
        assert ev.prefetch(snap, [(["infra/a.ncl"], INFRA)]) == 0
        assert ev.stats["evaluations"] == 0
        ev.evaluate(snap, ["infra/a.ncl"], INFRA)
        assert ev.prefetch(snap, [(["infra/a.ncl"], INFRA), (["stratum.ncl"], SETTINGS)]) == 0
        assert ev.stats["evaluations"] == 1
    finally:
        ev.close()


def test_loading_the_template_takes_three_nickel_runs(tmp_path: Path) -> None:
    """`stratum init`'s repository loads through every reconciler in three runs (the settings, vault and agents
    files together; infra; the knowledge front matter) where it took nine (one per settings, infra, rules,
    token roles, transit, PKI, database, knowledge, agents), with no problem."""
    ops = tmp_path / "ops"
    shutil.copytree(template_dir(), ops)
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=ops, check=True)
    subprocess.run(["git", "add", "-A"], cwd=ops, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q", "-m", "t"],
                   cwd=ops, check=True)
    settings = load_settings({"repo": str(ops), "data_dir": str(tmp_path / "data")})
    snap = GitSource(str(ops), "main", tmp_path / "data").snapshot("main")
    ev = Evaluator(tmp_path / "cache", timeout=30.0, keep_values=False)
    built, unavailable = build_reconcilers(settings, ev)
    try:
        loaded = load_snapshot(snap, built, ev)
        assert loaded.problems == () and unavailable == {}
        assert ev.stats["evaluations"] == 3
    finally:
        for rec in built.values():
            rec.close()
        ev.close()


def test_validate_of_the_template_still_reports_a_broken_vault_file(tmp_path: Path) -> None:
    """A broken engine declaration in the template fails the batch, and `stratum validate` still names the file
    (the groups' own evaluations pin it)."""
    ops = tmp_path / "ops"
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    subprocess.run([sys.executable, "-c", "from daemon.cli.main import main; main()", "init", str(ops)],
                   check=True, capture_output=True, timeout=120, env=env)
    (ops / "vault" / "transit" / "app.ncl").write_text("{ keys = 1 + \"x\" }\n")
    subprocess.run(["git", "add", "-A"], cwd=ops, check=True)          # validate checks the staged tree
    proc = subprocess.run([sys.executable, "-c", "from daemon.cli.main import main; main()", "validate"],
                          cwd=ops, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "vault/transit/app.ncl" in proc.stderr
