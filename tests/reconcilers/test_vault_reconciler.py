"""The daemon side: load a real commit, verify and decrypt changed manifests only, plan, apply into memory,
and reject tampered, untrusted and replayed manifests."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon.git.source import GitSource
from daemon.nickel.evaluator import Evaluator
from reconcilers.base import ApplyContext, ReconcilerEnv
from reconcilers.vault import envelope, keys, manifest
from reconcilers.vault.backends import get_backend
from reconcilers.vault.reconciler import VaultReconciler
from tests.fixtures import WorkRepo

B = get_backend("openssl")
CTX = ApplyContext(run_id="r1", revision="x")


@pytest.fixture
def world(tmp_path: Path, evaluator: Evaluator,
          ) -> Iterator[tuple[WorkRepo, VaultReconciler, GitSource, keys.SigningKey, keys.Recipient]]:
    reconciler = VaultReconciler(ReconcilerEnv(data_dir=tmp_path / "data", evaluator=evaluator))
    daemon_recipient = reconciler.key_source.recipient()
    _, signing = keys.generate(B)
    repo = WorkRepo(tmp_path / "ops")
    repo.commit(
        {
            "secrets/rules.ncl": (
                f'{{ trusted_signers = [{{ name = "ops", key = {json.dumps(signing.signer.text)} }}],\n'
                f'  creation_rules = [{{ path_regex = "^secrets/",\n'
                f"    recipients = [{json.dumps(daemon_recipient.text)}] }}] }}\n"
            )
        }
    )
    yield repo, reconciler, GitSource(str(repo.path), "main", tmp_path / "src"), signing, daemon_recipient
    reconciler.close()


def sealed(
    values: dict[str, object],
    signing: keys.SigningKey,
    recipient: keys.Recipient,
    previous: envelope.Opened | None = None,
    path: str = "secrets/db.yaml",
) -> manifest.Manifest:
    return envelope.seal(B, values, path=path, policy=envelope.Policy(((recipient,),)), key=signing, previous=previous)


def run(reconciler: VaultReconciler, source: GitSource) -> list[str]:
    """One revision through load, validate, plan, apply; the problems (as text) or the applied action kinds."""
    desired = reconciler.load(source.snapshot("main"))
    problems = reconciler.validate(desired)
    if problems:
        return [str(p) for p in problems]
    actions = reconciler.plan(desired, reconciler.observe(desired, []), [])
    for action in actions:
        assert reconciler.apply(action, CTX).ok
    return [f"{a.kind} {a.target}" for a in actions]


def test_daemon_loads_values_into_memory_only(world: Any) -> None:
    """A committed manifest is decrypted with the daemon's key; its values are served from memory; the state
    on disk holds versions, never values; the daemon key file is 0600."""
    repo, reconciler, source, signing, rcpt = world
    repo.commit({"secrets/db.yaml": manifest.render(sealed({"db": {"password": "pw-123"}}, signing, rcpt))})
    assert run(reconciler, source) == ["create secrets/db.yaml"]
    assert reconciler.get("secrets/db.yaml", "db.password") == "pw-123"
    state = (reconciler.state_dir / "versions.json").read_text()
    assert "pw-123" not in state and "secrets/db.yaml" in state
    assert (reconciler.state_dir / "daemon.key").stat().st_mode & 0o777 == 0o600
    assert "pw-123" not in repr(reconciler._store)


def test_unchanged_blobs_are_not_verified_again(world: Any) -> None:
    """A second commit that changes another manifest verifies only that one (blob-id cache)."""
    repo, reconciler, source, signing, rcpt = world
    repo.commit({"secrets/a.yaml": manifest.render(sealed({"k": "1"}, signing, rcpt, path="secrets/a.yaml"))})
    run(reconciler, source)
    repo.commit({"secrets/b.yaml": manifest.render(sealed({"k": "2"}, signing, rcpt, path="secrets/b.yaml"))})
    before = reconciler.stats["verified"]
    assert run(reconciler, source) == ["create secrets/b.yaml"]
    assert reconciler.stats["verified"] == before + 1


def test_tampered_manifest_rejects_the_revision(world: Any) -> None:
    """A changed ciphertext fails the signature; nothing is applied and the old value stays in force."""
    repo, reconciler, source, signing, rcpt = world
    text = manifest.render(sealed({"db": {"password": "pw-1"}}, signing, rcpt))
    repo.commit({"secrets/db.yaml": text})
    run(reconciler, source)
    enc = manifest.parse(text, "f").data["db"]["password"]
    flipped = enc.replace("data:", "data:A", 1)
    repo.commit({"secrets/db.yaml": text.replace(enc, flipped)})
    problems = run(reconciler, source)
    assert problems and all("secrets/db.yaml" in p for p in problems)
    assert reconciler.get("secrets/db.yaml", "db.password") == "pw-1"


def test_untrusted_signer_is_rejected(world: Any) -> None:
    """A manifest signed by a key not in trusted_signers is a problem, not applied."""
    repo, reconciler, source, _, rcpt = world
    _, stranger = keys.generate(B)
    repo.commit({"secrets/db.yaml": manifest.render(sealed({"x": "1"}, stranger, rcpt))})
    problems = run(reconciler, source)
    assert any("not a trusted signer" in p for p in problems)
    assert reconciler.paths() == []


def test_replayed_old_manifest_is_rejected_across_restarts(world: Any, tmp_path: Path, evaluator: Evaluator) -> None:
    """v1 applied, v2 applied, then v1 committed again: rejected, also by a restarted daemon."""
    repo, reconciler, source, signing, rcpt = world
    v1 = sealed({"k": "old"}, signing, rcpt)
    repo.commit({"secrets/db.yaml": manifest.render(v1)})
    run(reconciler, source)
    opened = envelope.open_manifest(B, v1, reconciler.key_source.keyring(), "f")
    repo.commit({"secrets/db.yaml": manifest.render(sealed({"k": "new"}, signing, rcpt, previous=opened))})
    assert run(reconciler, source) == ["update secrets/db.yaml"]
    repo.commit({"secrets/db.yaml": manifest.render(v1)})
    restarted = VaultReconciler(ReconcilerEnv(data_dir=tmp_path / "data", evaluator=evaluator))
    try:
        problems = run(restarted, source)
    finally:
        restarted.close()
    assert any("replayed" in p for p in problems)


def test_deleted_manifest_is_unloaded(world: Any) -> None:
    """Removing a manifest from the repo plans a delete and drops its values from memory."""
    repo, reconciler, source, signing, rcpt = world
    repo.commit({"secrets/db.yaml": manifest.render(sealed({"k": "v"}, signing, rcpt))})
    run(reconciler, source)
    repo.commit({"secrets/db.yaml": None})
    assert run(reconciler, source) == ["delete secrets/db.yaml"]
    with pytest.raises(KeyError):
        reconciler.get("secrets/db.yaml", "k")


def test_many_manifests_are_checked_once_each_and_in_their_places(world: Any) -> None:
    """A commit of more manifests than check.PARALLEL_MIN (checked together, by check_manifests): each is verified
    once, only the tampered one is a problem, and the next commit verifies only the one it changed."""
    from reconcilers.vault import check

    repo, reconciler, source, signing, rcpt = world
    count = check.PARALLEL_MIN + 4
    paths = [f"secrets/m{i:02}.yaml" for i in range(count)]
    files = {p: manifest.render(sealed({"k": p[9:11].lstrip("0") or "0"}, signing, rcpt, path=p)) for p in paths}
    enc = manifest.parse(files["secrets/m07.yaml"], "f").data["k"]
    files["secrets/m07.yaml"] = files["secrets/m07.yaml"].replace(enc, enc.replace("data:", "data:A", 1))
    repo.commit(files)
    before = reconciler.stats["verified"]
    problems = run(reconciler, source)
    assert problems and all("secrets/m07.yaml" in p for p in problems)
    assert reconciler.stats["verified"] == before + count
    repo.commit({"secrets/m07.yaml": manifest.render(sealed({"k": "7"}, signing, rcpt, path="secrets/m07.yaml"))})
    hits = reconciler.stats["cache_hits"]
    assert run(reconciler, source) == [f"create secrets/m{i:02}.yaml" for i in range(count)]
    assert reconciler.stats["verified"] == before + count + 1
    assert reconciler.stats["cache_hits"] == hits + count - 1
    assert reconciler.get("secrets/m12.yaml", "k") == "12"
