"""PKI mounts declared in the repo (vault/pki/*.ncl): the contract's errors are located, and plan/apply bring
the mounts' stores to what the commit says (an ML-DSA root, an ec intermediate it signs, roles) and no further.
Stores are MemoryStores (the vault's barrier is being built in parallel)."""

from __future__ import annotations

from pathlib import Path

from cryptography import x509

from daemon.git.source import GitSource
from daemon.nickel.evaluator import Evaluator
from reconcilers.vault.pki import api, declared
from reconcilers.vault.pki.storage import MemoryStore
from tests.fixtures import WorkRepo

ROOT = '{ ca = { common_name = "Ops root", key_type = "ml-dsa-65", ttl = "87600h" } }\n'
INT = """{
  ca = { common_name = "Ops etcd CA", key_type = "ec", issuer = "root", ttl = "43800h" },
  roles = {
    etcd = { allowed_domains = ["etcd.internal"], allow_subdomains = true, max_ttl = "720h" },
    kubelet = { allowed_domains = ["nodes.internal"], allow_subdomains = true, key_type = "ml-dsa-65" },
  },
}
"""


def _load(tmp: Path, repo: WorkRepo, evaluator: Evaluator, files: dict[str, str | None]) -> tuple[
        dict[str, declared.MountSpec], list[str]]:
    repo.commit(files)
    snap = GitSource(str(repo.path), "main", tmp / "data").snapshot("main")
    specs, problems = declared.load(evaluator, snap)
    return specs, [str(p) for p in problems]


def test_declared_root_intermediate_and_roles_apply_and_converge(tmp_path: Path, repo: WorkRepo,
                                                                 evaluator: Evaluator) -> None:
    """The first apply makes the root, the intermediate signed by it and the roles; a second plan is empty;
    changing and removing roles in a later commit plans exactly those changes."""
    specs, problems = _load(tmp_path, repo, evaluator, {"vault/pki/root.ncl": ROOT, "vault/pki/int.ncl": INT})
    assert problems == []
    stores = {"root": MemoryStore(), "int": MemoryStore()}
    changes = declared.plan(specs, stores)
    assert [(c.mount, c.action, c.target) for c in changes] == [
        ("root", "create-root", "Ops root"), ("int", "create-intermediate", "Ops etcd CA"),
        ("int", "write-role", "etcd"), ("int", "write-role", "kubelet")]
    done = declared.apply(specs, stores, changes)
    assert len(done) == 4 and "PRIVATE" not in " ".join(done)
    assert declared.plan(specs, stores) == []
    status, issued = api.handle("POST", "issue/etcd", {"common_name": "m1.etcd.internal"}, stores["int"])
    assert status == 200, issued
    leaf = x509.load_pem_x509_certificate(issued["data"]["certificate"].encode())
    chain = [x509.load_pem_x509_certificate(p.encode()) for p in issued["data"]["ca_chain"]]
    leaf.verify_directly_issued_by(chain[0])
    chain[0].verify_directly_issued_by(chain[1])
    assert chain[1].subject.rfc4514_string() == "CN=Ops root"

    edited = INT.replace('max_ttl = "720h"', 'max_ttl = "240h"').replace(
        '    kubelet = { allowed_domains = ["nodes.internal"], allow_subdomains = true, key_type = "ml-dsa-65" },\n',
        "")
    specs, problems = _load(tmp_path, repo, evaluator, {"vault/pki/int.ncl": edited})
    assert problems == []
    changes = declared.plan(specs, stores)
    assert [(c.mount, c.action, c.target) for c in changes] == [("int", "write-role", "etcd"),
                                                                ("int", "delete-role", "kubelet")]
    declared.apply(specs, stores, changes)
    assert api.handle("GET", "roles/etcd", {}, stores["int"])[1]["data"]["max_ttl"] == 240 * 3600
    assert api.handle("GET", "roles/kubelet", {}, stores["int"])[0] == 404


def test_a_changed_ca_is_reported_never_replaced(tmp_path: Path, repo: WorkRepo, evaluator: Evaluator) -> None:
    """Renaming the CA in the repo plans `ca-differs`, and apply leaves the existing CA in place."""
    specs, _ = _load(tmp_path, repo, evaluator, {"vault/pki/root.ncl": ROOT})
    stores = {"root": MemoryStore()}
    declared.apply(specs, stores, declared.plan(specs, stores))
    before = api.handle("GET", "cert/ca", {}, stores["root"])[1]["data"]["certificate"]
    specs, _ = _load(tmp_path, repo, evaluator, {"vault/pki/root.ncl": ROOT.replace("Ops root", "New root")})
    changes = declared.plan(specs, stores)
    assert [(c.action, c.target) for c in changes] == [("ca-differs", "CN=Ops root")]
    assert declared.apply(specs, stores, changes) == []
    assert api.handle("GET", "cert/ca", {}, stores["root"])[1]["data"]["certificate"] == before


def test_bad_declarations_are_located_problems(tmp_path: Path, repo: WorkRepo, evaluator: Evaluator) -> None:
    """A bad key type, a missing common name, an unknown usage and an undeclared issuer each name the file."""
    specs, problems = _load(tmp_path, repo, evaluator, {
        "vault/pki/a.ncl": '{ ca = { common_name = "A", key_type = "dsa" } }\n',
        "vault/pki/b.ncl": '{ ca = { key_type = "ec" } }\n',
        "vault/pki/c.ncl": '{ ca = { common_name = "C" }, roles = { r = { key_usage = ["Teleport"] } } }\n',
        "vault/pki/d.ncl": '{ ca = { common_name = "D", issuer = "nowhere" } }\n',
        "vault/pki/e f.ncl": '{ ca = { common_name = "E" } }\n',
    })
    text = "\n".join(problems)
    assert "vault/pki/a.ncl" in text and "key_type must be one of" in text
    assert "vault/pki/b.ncl" in text and "common_name" in text
    assert "vault/pki/c.ncl" in text and "Teleport" in text
    assert "vault/pki/d.ncl" in text and "'nowhere', which is not declared" in text
    assert "vault/pki/e f.ncl" in text and "mount name 'e f'" in text
    assert set(specs) == {"d"}
