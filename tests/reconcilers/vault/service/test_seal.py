"""The seal and the barrier: shares rebuild the root key, nothing is readable sealed, entries are bound to paths."""

from __future__ import annotations

from pathlib import Path

import hvac
import pytest
import requests

from reconcilers.vault.service.barrier import Barrier, CorruptEntry
from reconcilers.vault.service.core import VaultService
from reconcilers.vault.service.errors import BadRequest, Sealed
from reconcilers.vault.service.request import ApiRequest
from reconcilers.vault.service.storage.base import MemoryStore
from reconcilers.vault.service.storage.file import FileStore
from tests.reconcilers.vault.service.conftest import serve


def test_barrier_stores_only_ciphertext_bound_to_its_path() -> None:
    """What reaches storage is not the plaintext, and an entry copied to another path does not decrypt."""
    store = MemoryStore()
    barrier = Barrier(store)
    root = b"k" * 32
    barrier.initialize(root)
    barrier.unseal(root)
    barrier.put("logical/a", b"the-plaintext")
    assert b"the-plaintext" not in store.data["logical/a"]
    assert barrier.get("logical/a") == b"the-plaintext"
    store.data["logical/b"] = store.data["logical/a"]
    with pytest.raises(CorruptEntry):
        barrier.get("logical/b")


def test_rotate_keeps_old_entries_readable_and_survives_reseal() -> None:
    """sys/rotate adds a key version: old entries read with theirs, new ones use the newest, after a reseal too."""
    store = MemoryStore()
    barrier = Barrier(store)
    root = b"r" * 32
    barrier.initialize(root)
    barrier.unseal(root)
    barrier.put("old", b"1")
    assert barrier.rotate() == 2
    barrier.put("new", b"2")
    assert store.data["new"][1:5] == b"\0\0\0\2" and store.data["old"][1:5] == b"\0\0\0\1"
    barrier.seal()
    with pytest.raises(Sealed):
        barrier.get("old")
    barrier.unseal(root)
    assert (barrier.get("old"), barrier.get("new")) == (b"1", b"2")


@pytest.mark.parametrize("fmt", ["slip39", "base64"])
def test_any_threshold_of_the_shares_unseals(tmp_path: Path, fmt: str) -> None:
    """3-of-5 shares: any three unseal, two do not; the progress is reported as Vault does."""
    service = VaultService(FileStore(tmp_path / "s"), tmp_path / "audit.log")
    keys = service.initialize(5, 3, fmt)["keys"]
    assert len(set(keys)) == 5
    for subset in ([0, 1, 2], [4, 2, 3]):
        status = {}
        for i in subset:
            status = service.unseal(keys[i])
        assert status["sealed"] is False
        service.seal_now()
    status = service.unseal(keys[0])
    assert (status["sealed"], status["progress"], status["t"], status["n"]) == (True, 1, 3, 5)


def test_wrong_repeated_and_malformed_shares_are_named(tmp_path: Path) -> None:
    """A typo in a mnemonic, a repeated share and another vault's shares are refused with what was wrong."""
    service = VaultService(FileStore(tmp_path / "a"), tmp_path / "a.log")
    keys = service.initialize(3, 2, "slip39")["keys"]
    other = VaultService(FileStore(tmp_path / "b"), tmp_path / "b.log").initialize(3, 2, "slip39")["keys"]
    words = keys[0].split()
    typo = " ".join([*words[:-1], "academic" if words[-1] != "academic" else "acid"])
    with pytest.raises(BadRequest, match="not a valid SLIP-39 mnemonic"):
        service.unseal(typo)
    assert service.seal.status()["progress"] == 0
    service.unseal(keys[0])
    with pytest.raises(BadRequest, match="already given"):
        service.unseal(keys[0])
    with pytest.raises(BadRequest, match=r"do not combine|do not rebuild"):
        service.unseal(other[1])
    assert service.seal.status()["progress"] == 0 and service.barrier.sealed
    with pytest.raises(BadRequest, match="SLIP-39 mnemonics"):
        service.unseal("bm90IGEgc2hhcmU=")


def test_sealed_vault_answers_503_on_data_and_unseals_over_http(tmp_path: Path) -> None:
    """Sealed: data endpoints 503, seal-status tells the progress; hvac's unseal calls open it."""
    service = VaultService(FileStore(tmp_path / "s"), tmp_path / "audit.log")
    init = service.initialize(3, 2, "base64")
    server = serve(service)
    try:
        url = f"http://127.0.0.1:{server.port}"
        client = hvac.Client(url=url, token=init["root_token"])
        assert client.sys.is_sealed() is True
        answer = requests.get(f"{url}/v1/secret/data/x", headers={"X-Vault-Token": init["root_token"]}, timeout=5)
        assert answer.status_code == 503 and answer.json() == {"errors": ["Vault is sealed"]}
        assert requests.head(f"{url}/v1/sys/health", timeout=5).status_code == 503
        client.sys.submit_unseal_key(init["keys"][2])
        assert client.sys.read_seal_status()["progress"] == 1
        client.sys.submit_unseal_key(init["keys"][0])
        assert client.sys.is_sealed() is False
        assert requests.head(f"{url}/v1/sys/health", timeout=5).status_code == 200
        client.sys.seal()
        assert client.sys.is_sealed() is True
    finally:
        server.stop()


def test_init_over_http_once_only(tmp_path: Path) -> None:
    """sys/init via hvac gives shares and a root token once; a second init is refused."""
    service = VaultService(FileStore(tmp_path / "s"), tmp_path / "audit.log")
    server = serve(service)
    try:
        client = hvac.Client(url=f"http://127.0.0.1:{server.port}")
        assert client.sys.is_initialized() is False
        assert requests.head(f"http://127.0.0.1:{server.port}/v1/sys/health", timeout=5).status_code == 501
        out = client.sys.initialize(secret_shares=3, secret_threshold=2)
        assert len(out["keys"]) == 3 and out["root_token"].startswith("hvs.")
        with pytest.raises(hvac.exceptions.InvalidRequest, match="already initialized"):
            client.sys.initialize(secret_shares=3, secret_threshold=2)
        client.sys.submit_unseal_keys(out["keys"][:2])
        client.token = out["root_token"]
        assert client.lookup_token()["data"]["policies"] == ["root"]
    finally:
        server.stop()


def test_storage_holds_no_plaintext_or_token(tmp_path: Path) -> None:
    """After writes through the API, neither a secret value nor the root token appears in any stored file."""
    service = VaultService(FileStore(tmp_path / "s"), tmp_path / "audit.log")
    init = service.initialize(1, 1, "base64")
    service.unseal(init["keys"][0])
    service.handle(ApiRequest("POST", "secret/data/app", {"data": {"pw": "hunter2-plaintext"}},
                              token=init["root_token"]))
    blob = b"".join(p.read_bytes() for p in (tmp_path / "s").rglob("*") if p.is_file())
    assert b"hunter2-plaintext" not in blob and init["root_token"].encode() not in blob
    audit = (tmp_path / "audit.log").read_bytes()
    assert b"hunter2-plaintext" not in audit and init["root_token"].encode() not in audit
