"""The vault reconciler and the vault service together (in process): a manifest applied becomes a KV v2 version
at its KV path, a changed one a new version, a removed one soft-deleted (or kept with prune = false); the plan
names the KV path and the blob fingerprint, never a value; nothing is written while sealed, all of it at unseal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from daemon.git.source import GitSource
from daemon.nickel.evaluator import Evaluator
from reconcilers.base import ApplyContext, ReconcilerEnv, RunRecord
from reconcilers.vault import envelope, keys, manifest
from reconcilers.vault.reconciler import VaultReconciler
from reconcilers.vault.service.core import VaultService
from reconcilers.vault.service.errors import NotFound
from reconcilers.vault.service.request import ApiRequest
from tests.fixtures import WorkRepo
from tests.reconcilers.test_vault_reconciler import B, sealed

CTX = ApplyContext(run_id="r1", revision="x")
DB = "secrets/app/db.yaml"


def _world(tmp_path: Path, evaluator: Evaluator, prune: bool = True) -> tuple[WorkRepo, VaultReconciler, GitSource,
                                                                               keys.SigningKey, keys.Recipient]:
    env = ReconcilerEnv(data_dir=tmp_path / "data", evaluator=evaluator,
                        settings={"vault": {"listen": "127.0.0.1:0"}}, repo_settings={"vault": {"prune": prune}})
    reconciler = VaultReconciler(env)
    reconciler.http_mounts()         # what the daemon does at start: the vault service is built
    rcpt = reconciler.key_source.recipient()
    _, signing = keys.generate(B)
    repo = WorkRepo(tmp_path / "ops")
    repo.commit({"secrets/rules.ncl": (
        f'{{ trusted_signers = [{{ name = "ops", key = {json.dumps(signing.signer.text)} }}],\n'
        f'  creation_rules = [{{ path_regex = "^secrets/", recipients = [{json.dumps(rcpt.text)}] }}] }}\n')})
    return repo, reconciler, GitSource(str(repo.path), "main", tmp_path / "src"), signing, rcpt


def _run(reconciler: VaultReconciler, source: GitSource) -> list[str]:
    desired = reconciler.load(source.snapshot("main"))
    assert reconciler.validate(desired) == []
    actions = reconciler.plan(desired, reconciler.observe(desired, []), [])
    for action in actions:
        assert reconciler.apply(action, CTX).ok
    reconciler.on_run_finished(RunRecord("r", desired.revision, "succeeded", 0.0, 0.0), None)
    return [a.summary for a in actions]


def _kv(service: VaultService, token: str) -> tuple[int, dict[str, object] | None]:
    return service.handle(ApiRequest("GET", "kv/data/app/db", token=token))


def test_manifests_become_kv_versions_and_removal_soft_deletes(tmp_path: Path, evaluator: Evaluator) -> None:
    """Sealed: nothing written; unsealed: published; changed: version 2; removed: soft-deleted; plan lines name
    the KV path and the blob, never the value."""
    repo, reconciler, source, signing, rcpt = _world(tmp_path, evaluator)
    service = reconciler.vault_api.service
    assert service is not None
    v1 = sealed({"password": "pw-one"}, signing, rcpt, path=DB)
    repo.commit({DB: manifest.render(v1)})
    # Applied before the vault is initialized (the daemon's key is still its file; once initialized the key is
    # behind the seal and a sealed vault makes manifest applies wait: test_daemon_key_sealed.py).
    summaries = _run(reconciler, source)
    assert summaries and "-> kv/app/db" in summaries[0] and "blob " in summaries[0] and "pw-one" not in summaries[0]
    init = service.initialize(1, 1, "base64")
    service.unseal(init["keys"][0])                            # published when the vault opens
    root = init["root_token"]
    status, body = _kv(service, root)
    assert status == 200 and body is not None and body["data"]["data"] == {"password": "pw-one"}  # type: ignore[index]
    opened = envelope.open_manifest(B, v1, reconciler.key_source.keyring(), DB)
    repo.commit({DB: manifest.render(sealed({"password": "pw-two"}, signing, rcpt, path=DB, previous=opened))})
    _run(reconciler, source)
    status, body = _kv(service, root)
    assert body is not None and body["data"]["metadata"]["version"] == 2  # type: ignore[index]
    repo.commit({DB: None})
    assert any("soft-delete kv/app/db" in s for s in _run(reconciler, source))
    status, body = _kv(service, root)
    assert status == 404 and body is not None and body["data"]["metadata"]["deletion_time"]  # type: ignore[index]
    reconciler.close()


def test_prune_false_keeps_the_kv_secret(tmp_path: Path, evaluator: Evaluator) -> None:
    """With `vault = { prune = false }` a removed manifest's KV secret stays readable."""
    repo, reconciler, source, signing, rcpt = _world(tmp_path, evaluator, prune=False)
    service = reconciler.vault_api.service
    assert service is not None
    init = service.initialize(1, 1, "base64")
    service.unseal(init["keys"][0])
    repo.commit({DB: manifest.render(sealed({"password": "keep-me"}, signing, rcpt, path=DB))})
    _run(reconciler, source)
    repo.commit({DB: None})
    assert any("keep kv/app/db (prune = false)" in s for s in _run(reconciler, source))
    status, _ = _kv(service, init["root_token"])
    assert status == 200
    reconciler.close()


def test_rollback_puts_the_kv_values_back(tmp_path: Path, evaluator: Evaluator) -> None:
    """An update compensated (the run rolled back): KV holds the values before again; a create compensated:
    its KV secret is soft-deleted (review finding: compensate restored only the in-memory store)."""
    repo, reconciler, source, signing, rcpt = _world(tmp_path, evaluator)
    service = reconciler.vault_api.service
    assert service is not None
    init = service.initialize(1, 1, "base64")
    service.unseal(init["keys"][0])
    root = init["root_token"]
    v1 = sealed({"password": "before"}, signing, rcpt, path=DB)
    repo.commit({DB: manifest.render(v1)})
    _run(reconciler, source)
    opened = envelope.open_manifest(B, v1, reconciler.key_source.keyring(), DB)
    repo.commit({DB: manifest.render(sealed({"password": "after"}, signing, rcpt, path=DB, previous=opened))})
    desired = reconciler.load(source.snapshot("main"))
    assert reconciler.validate(desired) == []
    (update,) = reconciler.plan(desired, reconciler.observe(desired, []), [])
    assert reconciler.apply(update, CTX).ok
    assert _kv(service, root)[1]["data"]["data"] == {"password": "after"}  # type: ignore[index]
    reconciler.compensate(update, CTX)
    assert _kv(service, root)[1]["data"]["data"] == {"password": "before"}  # type: ignore[index]
    other = "secrets/app/new.yaml"
    repo.commit({other: manifest.render(sealed({"k": "v"}, signing, rcpt, path=other))})
    desired = reconciler.load(source.snapshot("main"))
    assert reconciler.validate(desired) == []
    actions = reconciler.plan(desired, reconciler.observe(desired, []), [])
    create = next(a for a in actions if a.target == other)
    assert reconciler.apply(create, CTX).ok
    assert service.handle(ApiRequest("GET", "kv/data/app/new", token=root))[0] == 200
    reconciler.compensate(create, CTX)
    assert service.handle(ApiRequest("GET", "kv/data/app/new", token=root))[0] == 404
    reconciler.close()


def test_the_vault_api_is_off_unless_the_host_asks(tmp_path: Path, evaluator: Evaluator) -> None:
    """No [vault] listen/enabled: no vault listener (review finding: every daemon offered sys/init on 8200)."""
    def mounts(settings: dict[str, object]) -> list[str]:
        reconciler = VaultReconciler(ReconcilerEnv(data_dir=tmp_path / f"d{len(settings)}", evaluator=evaluator,
                                                   settings={"vault": settings}))
        try:
            return [m.listen for m in reconciler.http_mounts()]
        finally:
            reconciler.close()
    assert mounts({}) == []
    assert mounts({"enabled": True}) == ["127.0.0.1:8200"]
    assert mounts({"enabled": True, "listen": "127.0.0.1:8300"}) == ["127.0.0.1:8300"]


def test_a_signed_kv_path_decides_where_the_values_go(tmp_path: Path, evaluator: Evaluator) -> None:
    """A manifest whose signed stratum.kv_path is kv/shared/db publishes there (not at kv/app/db), and the plan
    says so (review finding: the declared kv_path was ignored)."""
    repo, reconciler, source, signing, rcpt = _world(tmp_path, evaluator)
    service = reconciler.vault_api.service
    assert service is not None
    init = service.initialize(1, 1, "base64")
    service.unseal(init["keys"][0])
    m = envelope.seal(B, {"password": "shared"}, path=DB, policy=envelope.Policy(((rcpt,),)), key=signing,
                      kv_path="kv/shared/db")
    repo.commit({DB: manifest.render(m)})
    summaries = _run(reconciler, source)
    assert any("-> kv/shared/db" in s for s in summaries)
    status, body = service.handle(ApiRequest("GET", "kv/data/shared/db", token=init["root_token"]))
    assert status == 200 and body is not None and body["data"]["data"] == {"password": "shared"}
    with pytest.raises(NotFound):
        _kv(service, init["root_token"])           # nothing at the default path
    reconciler.close()
