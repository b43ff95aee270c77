"""The daemon's manifest-decryption key behind the vault's seal (issue 11 item 2), through a real pipeline: a git
repo, real sealed manifests, the vault service on file storage with a Shamir seal, the secrets broker, DuckDB and
a host root. `sys/init` moves the key file into the barrier and removes it; while sealed, manifest applies and
secret resolutions wait (retry class) and after unseal they proceed; a restart is sealed again until unsealed by
hand or from an unseal key file."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from daemon.git.source import GitSource
from daemon.index.store import Index
from daemon.nickel.evaluator import Evaluator
from daemon.run.pipeline import Pipeline
from daemon.run.ports import SecretsBroker, TimerScheduler
from daemon.run.retry import RetryPolicy
from reconcilers.base import ReconcilerEnv
from reconcilers.infra.reconciler import InfraReconciler
from reconcilers.vault.keys import IDENTITY_HRP
from reconcilers.vault.keysource import (
    FileKeySource,
    KeySealedError,
    SealedKeySource,
    barrier_path,
    moved_marker,
)
from reconcilers.vault.reconciler import VaultReconciler
from reconcilers.vault.service.core import VaultService
from tests.fixtures import WorkRepo
from tests.proc import cli_env
from tests.vault_fixtures import CANARY, SecretWorld, secret_world

DB = "secrets/app/db.yaml"
INFRA = ('{ resources = { pw = { kind = \'file, path = "pw", content = { secret = "kv/app/db", key = "password" } },'
         ' motd = { kind = \'file, path = "motd", content = "hi\\n" } } }\n')


@dataclass
class World:
    repo: WorkRepo
    secrets: SecretWorld
    pipe: Pipeline
    vault: VaultReconciler
    index: Index
    data: Path
    root: Path
    rerun: list[str]

    @property
    def service(self) -> VaultService:
        assert self.vault.vault_api.service is not None
        return self.vault.vault_api.service


def _vault(data: Path, evaluator: Evaluator, broker: SecretsBroker | None = None,
           settings: dict[str, Any] | None = None, scheduler: TimerScheduler | None = None) -> VaultReconciler:
    vault = VaultReconciler(ReconcilerEnv(
        data_dir=data, evaluator=evaluator, secrets=broker.for_("vault") if broker else None,
        settings={"vault": {"listen": "127.0.0.1:0", **(settings or {})}}, scheduler=scheduler))
    vault.http_mounts()                        # what the daemon does at start: the vault service is built
    return vault


@pytest.fixture
def world(tmp_path: Path, evaluator: Evaluator) -> Iterator[World]:
    data, root = tmp_path / "data", tmp_path / "root"
    secrets = secret_world(data)                       # the daemon's key file, as before any vault
    index = Index(data / "index.duckdb")
    broker = SecretsBroker(index)
    scheduler = TimerScheduler()
    asked: list[str] = []
    scheduler.rerun_fn = asked.append
    vault = _vault(data, evaluator, broker, scheduler=scheduler)
    infra = InfraReconciler(ReconcilerEnv(data_dir=data, settings={"infra": {"root": str(root)}},
                                          evaluator=evaluator, secrets=broker.for_("infra")))
    broker.provider = vault.secrets()
    repo = WorkRepo(tmp_path / "ops")
    pipe = Pipeline(source=GitSource(str(repo.path), "main", data), index=index,
                    reconcilers={"infra": infra, "vault": vault}, evaluator=evaluator)
    yield World(repo, secrets, pipe, vault, index, data, root, asked)
    scheduler.close()
    pipe.close()
    vault.close()
    index.close()


def _holding(folder: Path, needle: str) -> list[str]:
    return [str(p) for p in folder.rglob("*") if p.is_file() and needle.encode() in p.read_bytes()]


def _commit(w: World) -> str:
    return w.repo.commit({"secrets/rules.ncl": w.secrets.rules(),
                          DB: w.secrets.manifest({"password": CANARY}, path=DB), "infra/app.ncl": INFRA})


def test_init_moves_the_key_into_the_barrier_and_removes_the_file(world: World) -> None:
    """After `sys/init` the key file is gone; the marker beside it names the same recipient and holds no private
    key; no file under the data directory holds the private key's text in clear (the barrier encrypts it)."""
    key_file = world.data / "vault" / "daemon.key"
    secret_line = next(ln for ln in key_file.read_text().splitlines() if ln.startswith(IDENTITY_HRP))
    before = world.vault.key_source.recipient()
    init = world.service.initialize(1, 1, "base64")
    assert not key_file.exists()
    marker = moved_marker(key_file)
    assert marker.exists() and IDENTITY_HRP not in marker.read_text()
    assert _holding(world.data, secret_line) == []
    assert world.vault.key_source.recipient().text == before.text          # the recipient, while sealed
    assert FileKeySource(key_file).recipient().text == before.text         # `stratum secret daemon-key` too
    assert not key_file.exists()                                           # ... which made no new key
    with pytest.raises(KeySealedError, match="unseal with `stratum vault unseal`"):
        world.vault.key_source.keyring()
    world.service.unseal(init["keys"][0])
    ring = world.vault.key_source.keyring()
    assert ring.identities[0].recipient.text == before.text
    assert world.service.barrier.get(barrier_path(before)) is not None
    assert not key_file.exists()


def test_daemon_key_verb_says_the_key_is_behind_the_seal(world: World) -> None:
    """`stratum secret daemon-key` after the key moved: the same recipient, and it says the key is behind the seal
    instead of naming the file that no longer exists (it named the old path before)."""
    key_file = world.data / "vault" / "daemon.key"
    before = world.vault.key_source.recipient()
    world.service.initialize(1, 1, "base64")
    cmd = [sys.executable, "-c", "from daemon.cli.main import main; main()", "secret", "daemon-key",
           "--data-dir", str(world.data)]
    shown = subprocess.run([*cmd, "--output", "json"], env=cli_env(), capture_output=True, text=True, timeout=120,
                           check=True)
    doc = json.loads(shown.stdout)
    assert doc["sealed"] is True and doc["file"] is None and doc["recipient"] == before.text
    text = subprocess.run(cmd, env=cli_env(), capture_output=True, text=True, timeout=120, check=True)
    assert "behind the vault's seal" in text.stderr and str(key_file) not in text.stderr
    assert not key_file.exists()                                           # and it made no new key


def test_sealed_manifest_apply_waits_and_unseal_lets_it_proceed(world: World) -> None:
    """Sealed: the manifest's action and the file using its secret wait with the seal's message, the other file
    applies; unseal: the run goes on and succeeds, the secret reaches its file."""
    init = world.service.initialize(1, 1, "base64")
    rev = _commit(world)
    outcome: list[Any] = []
    runner = threading.Thread(target=lambda: outcome.append(world.pipe.run(rev)))
    runner.start()
    waiting: list[tuple[Any, ...]] = []
    try:
        for _ in range(400):
            waiting = world.index.query("SELECT message FROM events WHERE kind = 'action_waiting'")
            if waiting and (world.root / "motd").exists():
                break
            threading.Event().wait(0.05)
        assert waiting, "no action waited on the seal"
        assert "vault:secrets/app/db.yaml" in waiting[0][0]
        assert "the vault is sealed: unseal with `stratum vault unseal`" in waiting[0][0]
        assert (world.root / "motd").read_text() == "hi\n" and not (world.root / "pw").exists()
    finally:
        world.service.unseal(init["keys"][0])
        runner.join(120)
    assert outcome and outcome[0].status == "succeeded", outcome
    assert (world.root / "pw").read_text() == CANARY
    world.pipe.wait_hooks()
    assert world.rerun == []                  # the waiting run went through: no second run is asked for
    world.index.sync()
    assert _holding(world.data, CANARY) == []


def test_a_run_that_waited_out_the_seal_is_run_again_at_unseal(world: World) -> None:
    """The waiting budget spent while sealed: the run fails with the seal's message (the rest of it applied);
    at unseal the daemon is asked for a run (Scheduler.rerun), which applies the revision."""
    init = world.service.initialize(1, 1, "base64")
    world.pipe.retry = RetryPolicy(max_wait=0.5)
    rev = _commit(world)
    result = world.pipe.run(rev)
    assert result.status in ("failed", "rolled_back") and "unseal with `stratum vault unseal`" in result.message
    world.pipe.wait_hooks()
    assert world.rerun == []
    world.service.unseal(init["keys"][0])
    assert world.rerun == ["vault unsealed"]
    assert world.pipe.run(rev, trigger="rerun:vault unsealed").status == "succeeded"
    assert (world.root / "pw").read_text() == CANARY


def test_sealing_forgets_the_key_and_every_plaintext(world: World) -> None:
    """sys/seal drops the key and the plaintext cache: a secret resolution then waits (never a stale value)."""
    init = world.service.initialize(1, 1, "base64")
    world.service.unseal(init["keys"][0])
    assert world.pipe.run(_commit(world)).status == "succeeded"
    port = world.vault.secrets()
    assert port.resolve("kv/app/db#password", purpose="test") == CANARY
    world.service.seal_now()
    from reconcilers.errors import WaitingError

    with pytest.raises(WaitingError, match="behind the vault's seal"):
        port.resolve("kv/app/db#password", purpose="test")


def test_restart_is_sealed_until_unsealed_or_auto_unsealed(world: World, evaluator: Evaluator,
                                                           tmp_path: Path) -> None:
    """A new daemon on the same data directory starts sealed: no key until unseal. With an unseal key file it
    opens at start and has the key; neither start writes the key file again."""
    init = world.service.initialize(1, 1, "base64")
    world.service.unseal(init["keys"][0])
    recipient = world.vault.key_source.keyring().identities[0].recipient.text
    world.vault.close()
    key_file = world.data / "vault" / "daemon.key"

    again = _vault(world.data, evaluator)
    try:
        service = again.vault_api.service
        assert service is not None and service.barrier.sealed
        assert isinstance(again.key_source, SealedKeySource)
        with pytest.raises(KeySealedError):
            again.key_source.keyring()
        assert again.recipient_fingerprint() is not None                   # the marker answers while sealed
        service.unseal(init["keys"][0])
        assert again.key_source.keyring().identities[0].recipient.text == recipient
    finally:
        again.close()
    shares = tmp_path / "unseal"
    shares.write_text(init["keys"][0] + "\n")
    shares.chmod(0o600)
    auto = _vault(world.data, evaluator, settings={"unseal_key_file": str(shares)})
    try:
        assert auto.vault_api.service is not None and not auto.vault_api.service.barrier.sealed
        assert auto.key_source.keyring().identities[0].recipient.text == recipient
    finally:
        auto.close()
    assert not key_file.exists()


def test_vault_disabled_keeps_the_key_file(tmp_path: Path, evaluator: Evaluator) -> None:
    """Without a vault service (the default) the daemon's key stays a 0600 file, as before."""
    data = tmp_path / "data"
    vault = VaultReconciler(ReconcilerEnv(data_dir=data, evaluator=evaluator))
    try:
        vault.http_mounts()
        assert vault.vault_api.service is None
        ring = vault.key_source.keyring()
        assert ring.identities and (data / "vault" / "daemon.key").exists()
        assert not moved_marker(data / "vault" / "daemon.key").exists()
    finally:
        vault.close()


def test_daemons_sharing_a_vault_keep_their_own_keys(world: World, evaluator: Evaluator, tmp_path: Path) -> None:
    """Two daemons (their own data directories) on one vault storage: each key moves in under its own
    fingerprint, neither overwrites the other's, and each gets its own key back."""
    shared = tmp_path / "shared-storage"
    first = _vault(tmp_path / "a", evaluator, settings={"storage_url": str(shared)})
    second = _vault(tmp_path / "b", evaluator, settings={"storage_url": str(shared)})
    try:
        mine = [v.key_source.recipient().text for v in (first, second)]   # each makes its key file
        assert mine[0] != mine[1]
        assert first.vault_api.service is not None and second.vault_api.service is not None
        init = first.vault_api.service.initialize(1, 1, "base64")
        first.vault_api.service.unseal(init["keys"][0])
        second.vault_api.service.unseal(init["keys"][0])
        got = [v.key_source.keyring().identities[0].recipient.text for v in (first, second)]
        assert got == mine
        assert not (tmp_path / "a" / "vault" / "daemon.key").exists()
        assert not (tmp_path / "b" / "vault" / "daemon.key").exists()
    finally:
        first.close()
        second.close()
