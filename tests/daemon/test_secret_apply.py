"""Committed secret manifests end to end: `stratum apply` and a real stratumd apply a commit that carries one
(issue 9, item 1: this used to fail every time with `internal error: KeyError: 'data'`), and plaintext exists only
in the daemon's memory after apply: never at validate or plan, never for a rejected revision, never in the
index, the logs, the plan or the CLI's output (issue 10, item 3)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.git.source import GitSource
from daemon.index.store import Index
from daemon.nickel.evaluator import Evaluator
from daemon.run.pipeline import Pipeline
from reconcilers.base import ReconcilerEnv
from reconcilers.infra.reconciler import InfraReconciler
from reconcilers.vault.keys import KeyRing, Recipient
from reconcilers.vault.keysource import FileKeySource
from reconcilers.vault.reconciler import VaultReconciler
from tests.fixtures import WorkRepo, bare_repo, infra, resource
from tests.proc import DaemonProc, cli_env, index_rows
from tests.vault_fixtures import CANARY, SecretWorld, secret_world

MOTD = infra(resource("motd", "file", path="etc/motd", content="hello\n"))


def _stratum(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", "from daemon.cli.main import main; main()", *args], cwd=cwd,
                          env=cli_env(), capture_output=True, text=True, timeout=300, check=False)


def _first_commit(repo: WorkRepo, world: SecretWorld) -> str:
    return repo.commit({"infra/motd.ncl": MOTD, "secrets/rules.ncl": world.rules(),
                        "secrets/app.yaml": world.manifest({"db": {"password": CANARY}})})


def _no_canary_under(folder: Path) -> list[str]:
    """Every file under `folder` whose bytes contain the canary (the index, its journal, state, logs)."""
    return [str(p) for p in folder.rglob("*") if p.is_file() and CANARY.encode() in p.read_bytes()]


@pytest.mark.slow
def test_stratum_apply_applies_a_commit_with_a_manifest(tmp_path: Path) -> None:
    """`stratum apply` of a commit with a secret manifest succeeds and moves last applied; a later plan of a new
    version shows the update; no output, index or state file ever holds the plaintext."""
    data, root = tmp_path / "data", tmp_path / "root"
    world = secret_world(data)
    repo = WorkRepo(tmp_path / "ops")
    first = _first_commit(repo, world)
    common = ["--repo", str(repo.path), "--data-dir", str(data), "--root", str(root)]
    applied = _stratum("apply", *common, "--output", "json", cwd=tmp_path)
    assert applied.returncode == 0, applied.stderr
    run = json.loads(applied.stdout)
    assert run["status"] == "succeeded", run
    assert "KeyError" not in applied.stdout + applied.stderr
    assert (root / "etc/motd").read_text() == "hello\n"
    assert index_rows(data, "SELECT value FROM state WHERE key = 'last_applied_revision'") == [(first,)]
    assert index_rows(data, "SELECT resource_id FROM inventory WHERE reconciler = 'vault'") == [("secrets/app.yaml",)]
    second = repo.commit({"secrets/app.yaml": world.manifest({"db": {"password": CANARY + "-2"}},
                                                             previous=(repo.path / "secrets/app.yaml").read_text())})
    planned = _stratum("plan", *common, "--format", "json", cwd=tmp_path)
    assert planned.returncode == 0, planned.stderr
    assert [a["id"] for a in json.loads(planned.stdout)["actions"]] == ["vault:secrets/app.yaml"]
    again = _stratum("apply", *common, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert index_rows(data, "SELECT value FROM state WHERE key = 'last_applied_revision'") == [(second,)]
    for out in (applied, planned, again):
        assert CANARY not in out.stdout + out.stderr
    assert _no_canary_under(data) == []


@pytest.mark.slow
def test_daemon_applies_a_pushed_manifest_and_records_success(tmp_path: Path) -> None:
    """Under a real stratumd a pushed commit with a manifest is recorded `succeeded` (not failed with the infra
    part applied), last applied moves to it, and neither the log nor the index holds the plaintext."""
    data, root = tmp_path / "data", tmp_path / "root"
    world = secret_world(data)
    remote = bare_repo(tmp_path / "remote.git")
    work = WorkRepo(tmp_path / "work", remote=remote)
    first = _first_commit(work, world)
    work.push()
    d = DaemonProc(str(remote), data, root)
    try:
        run = d.wait_run(first, 120)
        assert run["status"] == "succeeded", run
        status = d.call("status")["status"]
        assert status["reconcilers"]["vault"]["last_applied_revision"] == first
        assert status["last_applied_revision"] == first
        second = work.commit({"secrets/other.yaml": world.manifest({"k": CANARY}, path="secrets/other.yaml")})
        work.push()
        assert d.wait_run(second, 120)["status"] == "succeeded"
    finally:
        assert d.stop() == 0
    assert "KeyError" not in d.log()
    assert CANARY not in d.log()
    assert _no_canary_under(data) == []


@pytest.mark.slow
def test_a_new_process_sees_applied_manifests_as_applied(tmp_path: Path) -> None:
    """After `stratum apply`, a `stratum plan` in a new process (or a restarted daemon) plans nothing for the
    manifests this data directory applied: it used to plan every manifest again ("create", with a drift line "not
    loaded at the committed version"), and a restarted daemon published a new KV version of each. A manifest
    removed and then committed again is loaded again."""
    data, root = tmp_path / "data", tmp_path / "root"
    world = secret_world(data)
    repo = WorkRepo(tmp_path / "ops")
    _first_commit(repo, world)
    common = ["--repo", str(repo.path), "--data-dir", str(data), "--root", str(root)]
    assert _stratum("apply", *common, cwd=tmp_path).returncode == 0
    planned = _stratum("plan", *common, "--format", "json", cwd=tmp_path)
    assert planned.returncode == 0, planned.stderr
    plan = json.loads(planned.stdout)
    assert plan["actions"] == [], plan["actions"]
    assert "not loaded" not in planned.stdout
    text = (repo.path / "secrets/app.yaml").read_text()
    repo.commit({"secrets/app.yaml": None})
    assert _stratum("apply", *common, cwd=tmp_path).returncode == 0
    repo.commit({"secrets/app.yaml": text})
    again = json.loads(_stratum("plan", *common, "--format", "json", cwd=tmp_path).stdout)
    assert [(a["id"], a["kind"]) for a in again["actions"]] == [("vault:secrets/app.yaml", "create")]


class CountingKeySource:
    """A real KeySource (the daemon's key file) that counts how often the private key is asked for."""

    def __init__(self, inner: FileKeySource) -> None:
        self.inner = inner
        self.asked = 0

    def keyring(self) -> KeyRing:
        """The daemon's key ring, counted."""
        self.asked += 1
        return self.inner.keyring()

    def recipient(self) -> Recipient:
        """The daemon's recipient (public: not counted)."""
        return self.inner.recipient()


@pytest.fixture
def piped(tmp_path: Path, evaluator: Evaluator) -> Iterator[tuple[WorkRepo, SecretWorld, Pipeline, VaultReconciler,
                                                                   CountingKeySource]]:
    data = tmp_path / "data"
    world = secret_world(data)
    keysource = CountingKeySource(FileKeySource(data / "vault" / "daemon.key"))
    env = ReconcilerEnv(data_dir=data, settings={"infra": {"root": str(tmp_path / "root")}}, evaluator=evaluator)
    vault = VaultReconciler(env, key_source=keysource, evaluator=evaluator)
    repo = WorkRepo(tmp_path / "ops")
    index = Index(data / "index.duckdb")
    pipe = Pipeline(source=GitSource(str(repo.path), "main", data), index=index,
                    reconcilers={"infra": InfraReconciler(env), "vault": vault}, evaluator=evaluator)
    yield repo, world, pipe, vault, keysource
    pipe.close()
    vault.close()
    index.close()


def test_plan_and_rejected_revision_never_make_plaintext(piped: tuple[WorkRepo, SecretWorld, Pipeline,
                                                                        VaultReconciler, CountingKeySource],
                                                         tmp_path: Path) -> None:
    """Validate and plan verify signatures only: the daemon's private key is not even read; a rejected revision
    neither; the apply decrypts (into memory), and the values are served from there."""
    repo, world, pipe, vault, keysource = piped
    first = _first_commit(repo, world)
    report = pipe.plan(first)
    assert not report.problems
    assert [a.id for a in report.actions if a.reconciler == "vault"] == ["vault:secrets/app.yaml"]
    assert keysource.asked == 0 and vault.plain.decrypted == 0
    assert CANARY not in json.dumps([a.change for a in report.actions])
    bad = repo.commit({"infra/broken.ncl": "{ resources = { x = { kind = 'nope } } }\n"})
    rejected = pipe.run(bad)
    assert rejected.status == "rejected"
    assert keysource.asked == 0 and vault.plain.decrypted == 0 and vault.paths() == []
    good = repo.commit({"infra/broken.ncl": None})
    assert pipe.run(good).status == "succeeded"
    assert keysource.asked >= 1 and vault.plain.decrypted == 1
    assert vault.get("secrets/app.yaml", "db.password") == CANARY
    pipe.index.sync()
    assert _no_canary_under(tmp_path / "data") == []


def test_plaintext_cache_is_bounded_and_cleared(piped: tuple[WorkRepo, SecretWorld, Pipeline, VaultReconciler,
                                                              CountingKeySource]) -> None:
    """The plaintext cache holds at most its limit (evicted values decrypt again on lookup), an unloaded
    manifest's values go at once, and close() drops everything."""
    repo, world, pipe, vault, _ = piped
    vault.plain.limit = 2
    files = {f"secrets/s{i}.yaml": world.manifest({"v": f"{CANARY}-{i}"}, path=f"secrets/s{i}.yaml")
             for i in range(4)}
    assert pipe.run(repo.commit({"secrets/rules.ncl": world.rules(), **files})).status == "succeeded"
    assert len(vault.plain) == 2
    assert [vault.get(f"secrets/s{i}.yaml", "v") for i in range(4)] == [f"{CANARY}-{i}" for i in range(4)]
    assert len(vault.plain) == 2
    assert pipe.run(repo.commit({"secrets/s3.yaml": None})).status == "succeeded"
    assert "secrets/s3.yaml" not in vault.paths()
    assert all(path != "secrets/s3.yaml" for path, _ in vault.plain._items)
    vault.close()
    assert len(vault.plain) == 0
