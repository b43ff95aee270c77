"""The engine declarations that `stratum init` lays down (repo_template/vault/) load under their contracts and
apply on a fresh machine: a CA and a role for the PKI, an empty (inert) database mount."""

from __future__ import annotations

from pathlib import Path

from daemon.git.source import GitSource
from daemon.nickel.evaluator import Evaluator
from reconcilers.vault.database import declared as db_declared
from reconcilers.vault.pki import api
from reconcilers.vault.pki import declared as pki_declared
from reconcilers.vault.pki.storage import MemoryStore
from tests.fixtures import WorkRepo

TEMPLATE = Path(__file__).resolve().parents[3] / "repo_template" / "vault"


def test_template_engines_load_and_apply(tmp_path: Path, repo: WorkRepo, evaluator: Evaluator) -> None:
    files = {str(p.relative_to(TEMPLATE.parent)): p.read_text() for p in TEMPLATE.rglob("*.ncl")}
    assert "vault/pki/ops.ncl" in files and "vault/database/app.ncl" in files
    repo.commit(files)
    snap = GitSource(str(repo.path), "main", tmp_path / "data").snapshot("main")
    pki, problems = pki_declared.load(evaluator, snap)
    assert problems == []
    stores = {"ops": MemoryStore()}
    pki_declared.apply(pki, stores, pki_declared.plan(pki, stores))
    status, reply = api.handle("POST", "issue/internal", {"common_name": "web.internal.example.com"}, stores["ops"])
    assert status == 200, reply
    db, problems = db_declared.load(evaluator, snap)
    assert problems == [] and db_declared.plan(db["app"], MemoryStore()) == []
