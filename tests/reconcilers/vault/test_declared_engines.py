"""Engine declarations under vault/ (transit keys, PKI CAs and roles, database mounts) go through a real run:
the pipeline (real git repo, DuckDB index, Nickel worker) with the infra and vault reconcilers and a real vault
service in process (file storage in the temp dir), checked through the vault's own request handler. The plan
names targets and spec fingerprints; apply creates, updates, rotates and deletes; a bad declaration is a located
problem that keeps the last state; a sealed or disabled vault leaves its actions waiting while infra applies."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from daemon.git.source import GitSource
from daemon.index.store import Index
from daemon.nickel.evaluator import Evaluator
from daemon.run.pipeline import Pipeline, RunResult
from reconcilers.base import ReconcilerEnv
from reconcilers.infra.reconciler import InfraReconciler
from reconcilers.vault.reconciler import VaultReconciler
from reconcilers.vault.service.core import VaultService
from reconcilers.vault.service.request import ApiRequest
from reconcilers.vault.transit import keys as transit_keys
from tests.fixtures import WorkRepo, infra, resource

TEMPLATE = Path(__file__).resolve().parents[3] / "repo_template" / "vault"
MOTD = infra(resource("motd", "file", path="etc/motd", content="hello\n"))
KEYS = """{ keys = {
  app = { type = "aes256-gcm96", auto_rotate_period = "720h" },
  old = { deletion_allowed = true },
  kept = {},
} }
"""
PKI = """{ ca = { common_name = "Test CA", key_type = "ec" },
  roles = { web = { allowed_domains = ["example.test"], allow_subdomains = true, ttl = "1h", max_ttl = "24h" } } }
"""


@dataclass
class World:
    """A repo, a pipeline over it, the vault reconciler, its service and the root token (None: vault off)."""

    tmp: Path
    repo: WorkRepo
    pipe: Pipeline
    vault: VaultReconciler
    service: VaultService | None
    root: str
    unseal_key: str

    def run(self, files: dict[str, str | None]) -> RunResult:
        return self.pipe.run(self.repo.commit(files))

    def messages(self, run_id: str) -> dict[str, str]:
        """target -> outcome message of a run's vault actions."""
        self.pipe.index.sync()
        rows = self.pipe.index.query("SELECT target, message FROM actions WHERE run_id = ? AND reconciler = 'vault'",
                                     [run_id])
        return {str(t): str(m) for t, m in rows}

    def api(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        assert self.service is not None
        return self.service.handle(ApiRequest(method, path, body=body or {}, token=self.root))


def _world(tmp_path: Path, evaluator: Evaluator, vault_on: bool = True, prune: bool = True) -> World:
    data = tmp_path / "data"
    settings: dict[str, Any] = {"infra": {"root": str(tmp_path / "root")}}
    if vault_on:
        settings["vault"] = {"listen": "127.0.0.1:0"}
    env = ReconcilerEnv(data_dir=data, settings=settings, evaluator=evaluator,
                        repo_settings={"vault": {"prune": prune}})
    vault = VaultReconciler(env, evaluator=evaluator)
    vault.http_mounts()                   # what a daemon does at start: the vault service is built
    service = vault.vault_api.service
    root = key = ""
    if service is not None:
        init = service.initialize(1, 1, "base64")
        root, key = init["root_token"], init["keys"][0]
        service.unseal(key)
    repo = WorkRepo(tmp_path / "ops")
    pipe = Pipeline(source=GitSource(str(repo.path), "main", data), index=Index(data / "index.duckdb"),
                    reconcilers={"infra": InfraReconciler(env), "vault": vault}, evaluator=evaluator)
    return World(tmp_path, repo, pipe, vault, service, root, key)


@pytest.fixture
def world(tmp_path: Path, evaluator: Evaluator) -> Iterator[World]:
    w = _world(tmp_path, evaluator)
    yield w
    w.pipe.close()
    w.vault.close()
    w.pipe.index.close()


def _key(w: World, name: str) -> transit_keys.Key | None:
    assert w.service is not None
    entry = w.service.mounts.entries["transit/"]
    return transit_keys.load(w.service.mounts.store_of(entry), name)


def test_declarations_are_applied_by_a_run(world: World) -> None:
    """A commit with transit keys and a PKI mount: the run succeeds; the vault holds the keys (encrypt works),
    the PKI role issues a certificate; plan lines name targets and fingerprints; the next run plans nothing."""
    report = world.pipe.plan(world.repo.commit({"vault/transit/keys.ncl": KEYS, "vault/pki/ops.ncl": PKI}))
    summaries = [a.summary for a in report.actions if a.reconciler == "vault"]
    assert report.drift == ()                                   # a pending create is the plan's, not drift
    assert any("create transit-key transit/keys/app (spec " in s for s in summaries), summaries
    assert any("create pki-ca ops/ca" in s for s in summaries) and any("ops/roles/web" in s for s in summaries)
    result = world.pipe.run("main")
    assert result.status == "succeeded", result.message
    status, body = world.api("POST", "transit/encrypt/app", {"plaintext": "aGVsbG8="})
    assert status == 200 and body["data"]["ciphertext"].startswith("vault:v1:")
    status, body = world.api("POST", "ops/issue/web", {"common_name": "a.example.test"})
    assert status == 200, body
    assert "BEGIN CERTIFICATE" in body["data"]["certificate"]
    status, _ = world.api("POST", "ops/issue/web", {"common_name": "a.elsewhere.test"})
    assert status == 400
    again = world.pipe.plan("main")
    assert [a.id for a in again.actions if a.reconciler == "vault"] == []


def test_changes_update_and_rotate(world: World) -> None:
    """A changed role is rewritten; a changed key policy is configured; a key older than its
    auto_rotate_period gets a new version at the next run (its age set in the store: time passing)."""
    assert world.run({"vault/transit/keys.ncl": KEYS, "vault/pki/ops.ncl": PKI}).status == "succeeded"
    changed = world.run({"vault/transit/keys.ncl": KEYS.replace("kept = {}", "kept = { exportable = true }"),
                         "vault/pki/ops.ncl": PKI.replace('"example.test"', '"example.org"')})
    assert changed.status == "succeeded", changed.message
    assert world.api("POST", "ops/issue/web", {"common_name": "a.example.org"})[0] == 200
    assert world.api("POST", "ops/issue/web", {"common_name": "a.example.test"})[0] == 400
    kept = _key(world, "kept")
    assert kept is not None and kept.exportable
    assert world.service is not None
    store = world.service.mounts.store_of(world.service.mounts.entries["transit/"])
    app = _key(world, "app")
    assert app is not None and app.latest_version == 1
    aged = {n: replace(v, created=v.created - 721 * 3600) for n, v in app.versions.items()}
    transit_keys.save(store, replace(app, versions=aged))
    report = world.pipe.plan("main")
    assert next(a.summary for a in report.actions if a.target == "engines/transit/keys/app").startswith(
        "update transit-key transit/keys/app"), report.actions
    assert world.pipe.run("main").status == "succeeded"
    rotated = _key(world, "app")
    assert rotated is not None and rotated.latest_version == 2


def test_removed_declarations_are_deleted_or_kept(world: World) -> None:
    """A removed role is deleted; a removed key is deleted only when declared with deletion_allowed; the CA
    stays (certificates depend on it)."""
    assert world.run({"vault/transit/keys.ncl": KEYS, "vault/pki/ops.ncl": PKI}).status == "succeeded"
    result = world.run({"vault/transit/keys.ncl": "{ keys = { app = {} } }\n",
                        "vault/pki/ops.ncl": PKI.replace("roles = { web", "roles = { other")})
    assert result.status == "succeeded", result.message
    assert _key(world, "old") is None                   # deletion_allowed = true
    assert _key(world, "kept") is not None              # not allowed: kept, and said so
    messages = world.messages(result.run_id)
    assert "deletion_allowed" in messages["engines/transit/keys/kept"]
    assert world.api("POST", "ops/issue/web", {"common_name": "a.example.test"})[0] in (400, 404)
    assert world.api("POST", "ops/issue/other", {"common_name": "a.example.test"})[0] == 200
    gone = world.run({"vault/pki/ops.ncl": None})
    assert gone.status == "succeeded"
    assert "never deletes a CA" in world.messages(gone.run_id)["engines/ops/ca"]
    assert world.api("GET", "ops/ca/pem")[0] == 200


def test_prune_false_keeps_removed_declarations(tmp_path: Path, evaluator: Evaluator) -> None:
    """With `vault = { prune = false }` nothing the repo stops declaring is deleted."""
    w = _world(tmp_path, evaluator, prune=False)
    try:
        assert w.run({"vault/transit/keys.ncl": KEYS, "vault/pki/ops.ncl": PKI}).status == "succeeded"
        result = w.run({"vault/transit/keys.ncl": None, "vault/pki/ops.ncl": PKI.replace("web", "other")})
        assert result.status == "succeeded"
        assert _key(w, "old") is not None
        assert w.api("POST", "ops/issue/web", {"common_name": "a.example.test"})[0] == 200
        assert "prune = false" in w.messages(result.run_id)["engines/ops/roles/web"]
    finally:
        w.pipe.close()
        w.vault.close()
        w.pipe.index.close()


@pytest.mark.parametrize(("path", "text", "expected"), [
    ("vault/transit/keys.ncl", '{ keys = { app = { type = "rot13" } } }\n', "vault/transit/keys.ncl"),
    ("vault/transit/keys.ncl", '{ keys = { app = { auto_rotate_period = "soon" } } }\n', "not a duration"),
    ("vault/pki/ops.ncl", PKI.replace('ttl = "1h"', 'ttl = "48h"'), "vault/pki/ops.ncl"),
    ("vault/pki/bad name.ncl", PKI, "is not valid"),
])
def test_a_bad_declaration_is_located_and_the_last_state_stays(world: World, path: str, text: str,
                                                               expected: str) -> None:
    """A bad key type, a bad period, a role whose ttl exceeds max_ttl, a bad file name: the revision is
    rejected with the file named, and the vault keeps what the last good revision declared."""
    assert world.run({"vault/transit/keys.ncl": KEYS, "vault/pki/ops.ncl": PKI}).status == "succeeded"
    result = world.run({path: text})
    assert result.status == "rejected", result.message
    rendered = [str(p) for p in result.problems]
    assert any(expected in r and r.startswith(path.split("/")[0]) for r in rendered), rendered
    assert _key(world, "app") is not None and _key(world, "kept") is not None
    assert world.api("POST", "ops/issue/web", {"common_name": "a.example.test"})[0] == 200


def test_sealed_vault_waits_while_infra_applies(world: World) -> None:
    """Sealed: the run succeeds, infra is applied, the vault actions say they wait for the unseal; after the
    unseal the next run applies them."""
    assert world.service is not None
    world.service.seal_now()
    result = world.run({"infra/motd.ncl": MOTD, "vault/transit/keys.ncl": KEYS})
    assert result.status == "succeeded", result.message
    assert (world.tmp / "root/etc/motd").read_text() == "hello\n"
    messages = world.messages(result.run_id)
    assert messages["engines/transit/keys/app"].startswith("waiting: the vault is sealed"), messages
    world.service.unseal(world.unseal_key)
    assert _key(world, "app") is None
    drift = [str(p) for p in world.pipe.plan("main").drift]     # what makes the daemon's drift check run again
    assert any("transit/keys/app is declared but not in the vault; policy correct" in d for d in drift), drift
    again = world.pipe.run("main")
    assert again.status == "succeeded"
    assert _key(world, "app") is not None
    assert world.pipe.plan("main").actions == ()


def test_template_plans_with_the_vault_disabled(tmp_path: Path, evaluator: Evaluator) -> None:
    """The template's vault/ (a transit key, a CA and role, an empty database mount, a policy, a token role)
    validates and plans on a machine with the vault off; apply says it waits, the run succeeds, and the next
    plan is empty (review of main: a plan after an apply of the template must be empty)."""
    w = _world(tmp_path, evaluator, vault_on=False)
    try:
        files = {str(p.relative_to(TEMPLATE.parent)): p.read_text() for p in TEMPLATE.rglob("*") if p.is_file()}
        assert "vault/transit/app.ncl" in files
        revision = w.repo.commit({**files, "infra/motd.ncl": MOTD})
        report = w.pipe.plan(revision)
        assert not report.problems
        targets = {a.target for a in report.actions if a.reconciler == "vault"}
        assert {"engines/transit/keys/app", "engines/ops/ca", "engines/ops/roles/internal"} <= targets
        result = w.pipe.run(revision)
        assert result.status == "succeeded", result.message
        assert "; 3 not yet, first: waiting: the vault is disabled" in result.message   # the run says so
        assert (tmp_path / "root/etc/motd").exists()
        messages = w.messages(result.run_id)
        assert all(m.startswith("waiting: the vault is disabled") for t, m in messages.items()
                   if t.startswith("engines/")), messages
        # Owned as waiting: a plan after the run is empty while the vault stays off (nothing is re-planned
        # each time), and no drift is claimed about a vault nobody can see.
        again = w.pipe.plan(revision)
        assert again.actions == () and again.drift == ()
        waiting = {i.resource_id for i in w.pipe.index.inventory("vault") if '"waiting":true' in i.data}
        assert waiting == targets
    finally:
        w.pipe.close()
        w.vault.close()
        w.pipe.index.close()


def test_the_sweeper_rotates_keys_on_schedule(world: World) -> None:
    """Between runs the vault's sweeper rotates a key whose latest version is older than its auto_rotate_period
    (as Vault does); a key without a period, or not yet due, is left alone."""
    from reconcilers.vault.service.sweeper import Sweeper

    assert world.run({"vault/transit/keys.ncl": KEYS}).status == "succeeded"
    assert world.service is not None
    app = _key(world, "app")
    assert app is not None
    created = app.versions[1].created
    assert Sweeper(world.service).sweep_once(created + 3600)["transit/"] == []
    assert Sweeper(world.service).sweep_once(created + 721 * 3600)["transit/"] == ["app"]
    rotated, kept = _key(world, "app"), _key(world, "kept")
    assert rotated is not None and rotated.latest_version == 2
    assert kept is not None and kept.latest_version == 1


def test_a_declaration_the_vault_refuses_fails_the_run_with_its_file(world: World) -> None:
    """A new key declared with min_decryption_version above its only version: the action fails at once (no
    retries: the revision is wrong), the run is rolled back, and the error names the file and the field; a
    key declared under another type than the vault's is refused the same way."""
    result = world.run({"infra/motd.ncl": MOTD,
                        "vault/transit/keys.ncl": "{ keys = { app = { min_decryption_version = 5 } } }\n"})
    assert result.status in ("rolled_back", "failed"), result.message
    assert "vault/transit/keys.ncl" in result.message and "min_decryption_version" in result.message
    assert world.run({"vault/transit/keys.ncl": "{ keys = { app = {} } }\n"}).status == "succeeded"
    retyped = world.run({"vault/transit/keys.ncl": '{ keys = { app = { type = "ed25519" } } }\n'})
    assert retyped.status in ("rolled_back", "failed")
    assert "a key's type never changes" in retyped.message


def test_change_control_sees_engine_declarations(world: World) -> None:
    """Each declaration is a change-control resource (vault:engines/..., its kind, its file): a policy that
    forbids transit keys rejects a commit that declares one, and lets the PKI mount through."""
    policy = ('@id("allow-all")\npermit(principal, action, resource);\n'
              '@id("no-transit")\nforbid(principal, action, resource) when { resource.kind == "transit-key" };\n')
    result = world.run({"policies/base.cedar": policy, "vault/transit/keys.ncl": KEYS, "vault/pki/ops.ncl": PKI})
    assert result.status == "rejected", result.message
    denied = [p for p in result.problems if "denied by forbid policy no-transit" in p.message]
    assert len(denied) == 3 and {p.path for p in denied} == {"vault/transit/keys.ncl"}, result.problems
    assert world.run({"vault/transit/keys.ncl": None}).status == "succeeded"
    assert world.api("POST", "ops/issue/web", {"common_name": "a.example.test"})[0] == 200


def test_a_password_reference_to_no_manifest_is_a_located_problem(world: World) -> None:
    """A database connection whose password_secret names no manifest of the revision: rejected at validate,
    located at the file and the connection (the reference is resolved at apply only, never written)."""
    text = """{ connections = { main = {
  connection_url = "postgresql://{{username}}:{{password}}@127.0.0.1:1/app", username = "admin",
  password_secret = { secret = "kv/db/none", key = "password" }, allowed_roles = [] } } }
"""
    result = world.run({"vault/database/app.ncl": text})
    assert result.status == "rejected", result.message
    found = [p for p in result.problems if p.path == "vault/database/app.ncl"]
    assert found and "connections.main.password_secret" in found[0].message and "kv/db/none" in found[0].message


def test_changes_and_removals_made_while_sealed_apply_after_the_unseal(world: World) -> None:
    """Sealed: a changed role and a removed key wait (the plan after that run is empty); unsealed: both are
    drift ("policy correct"), and the next run rewrites the role and deletes the key."""
    assert world.run({"vault/transit/keys.ncl": KEYS, "vault/pki/ops.ncl": PKI}).status == "succeeded"
    assert world.service is not None
    world.service.seal_now()
    result = world.run({"vault/transit/keys.ncl": KEYS.replace("old = { deletion_allowed = true },", ""),
                        "vault/pki/ops.ncl": PKI.replace('"example.test"', '"example.org"')})
    assert result.status == "succeeded", result.message
    messages = world.messages(result.run_id)
    assert messages["engines/ops/roles/web"].startswith("waiting: the vault is sealed")
    assert messages["engines/transit/keys/old"].startswith("waiting: the vault is sealed")
    assert world.pipe.plan("main").actions == ()
    world.service.unseal(world.unseal_key)
    drift = " | ".join(str(p) for p in world.pipe.plan("main").drift)
    assert "ops/roles/web waited for the vault" in drift and "transit/keys/old waited for the vault" in drift
    assert world.pipe.run("main").status == "succeeded"
    assert world.api("POST", "ops/issue/web", {"common_name": "a.example.org"})[0] == 200
    assert _key(world, "old") is None
    assert world.pipe.plan("main").actions == () and world.pipe.plan("main").drift == ()


def test_an_intermediate_is_signed_by_its_declared_issuer(world: World) -> None:
    """`ca.issuer = "ops"`: a ttl not shorter than the issuer's is a located problem (the issuer would refuse
    to sign); with a shorter one the intermediate's CA action runs after the root's and is signed by it (an
    ML-DSA-65 intermediate under an EC root); its role issues certificates whose issuer is the intermediate."""
    inter = """{ ca = { common_name = "Test intermediate", key_type = "ml-dsa-65", issuer = "ops" },
  roles = { svc = { allowed_domains = ["svc.test"], allow_subdomains = true, key_type = "ec" } } }
"""
    rejected = world.run({"vault/pki/ops.ncl": PKI, "vault/pki/inter.ncl": inter})    # both default to 87600h
    assert rejected.status == "rejected"
    assert any(p.path == "vault/pki/inter.ncl" and "would outlive it" in p.message for p in rejected.problems)
    inter = inter.replace('issuer = "ops"', 'issuer = "ops", ttl = "43800h"')
    report = world.pipe.plan(world.repo.commit({"vault/pki/inter.ncl": inter}))
    ca_action = next(a for a in report.actions if a.target == "engines/inter/ca")
    assert ca_action.depends_on == ("vault:engines/ops/ca",)
    assert world.pipe.run("main").status == "succeeded"
    status, body = world.api("POST", "inter/issue/svc", {"common_name": "a.svc.test"})
    assert status == 200, body
    from cryptography import x509

    leaf = x509.load_pem_x509_certificate(body["data"]["certificate"].encode())
    assert leaf.issuer.rfc4514_string() == "CN=Test intermediate"
    chain = [x509.load_pem_x509_certificate(c.encode()) for c in body["data"]["ca_chain"]]
    assert [c.subject.rfc4514_string() for c in chain][-1] == "CN=Test CA"


def test_a_certificate_of_a_role_declared_in_the_same_commit(tmp_path: Path, evaluator: Evaluator) -> None:
    """One commit declares the PKI mount `pki` with role `web` and files using a certificate of that role: the
    files' actions depend on the role's action (vault:engines/pki/roles/web), and the run writes a certificate
    issued by the declared CA (lead's note: certrefs used another action id, so the files did not wait)."""
    from cryptography import x509

    from tests.reconcilers.vault.pki.test_certrefs import build, infra_file

    pipe, vault, index, repo = build(tmp_path, evaluator, {"listen": "127.0.0.1:0"})
    try:
        service = vault.vault_api.service
        assert service is not None
        init = service.initialize(1, 1, "base64")
        service.unseal(init["keys"][0])
        declared = """{ ca = { common_name = "Declared root", key_type = "ec" },
  roles = { web = { allowed_domains = ["web.internal"], allow_subdomains = true, allow_bare_domains = true,
                    allow_ip_sans = true, key_type = "ec", max_ttl = "72h" } } }
"""
        rev = repo.commit({"vault/pki/pki.ncl": declared, "infra/tls.ncl": infra_file()})
        report = pipe.plan(rev)
        assert not report.problems, report.problems
        crt_action = next(a for a in report.actions if a.id == "infra:crt")
        assert "vault:engines/pki/roles/web" in crt_action.depends_on, crt_action.depends_on
        result = pipe.run(rev)
        assert result.status == "succeeded", result.message
        crt = x509.load_pem_x509_certificate((tmp_path / "root/tls/web.crt").read_bytes())
        assert crt.issuer.rfc4514_string() == "CN=Declared root"
    finally:
        pipe.close()
        vault.close()
        index.close()
