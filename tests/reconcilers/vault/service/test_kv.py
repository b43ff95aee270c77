"""KV v2 and v1 through the real hvac client over loopback HTTP: Vault's paths, versions and errors."""

from __future__ import annotations

import http.client
import json

import hvac
import pytest
import requests

from reconcilers.vault.service.core import body_json
from reconcilers.vault.service.errors import BadRequest
from reconcilers.vault.service.request import ApiRequest
from tests.reconcilers.vault.service.conftest import Served


def test_kv2_versions_metadata_delete_undelete_destroy(vault: Served) -> None:
    """Write two versions, read each, soft-delete and undelete one, destroy another; metadata tells it all."""
    kv = vault.client().secrets.kv.v2
    kv.create_or_update_secret("app/db", secret={"password": "one"})
    kv.create_or_update_secret("app/db", secret={"password": "two"})
    assert kv.read_secret_version("app/db", raise_on_deleted_version=True)["data"]["data"] == {"password": "two"}
    assert kv.read_secret_version("app/db", version=1, raise_on_deleted_version=True)["data"]["data"] == {
        "password": "one"}
    kv.delete_secret_versions("app/db", versions=[2])
    with pytest.raises(hvac.exceptions.InvalidPath):
        kv.read_secret_version("app/db", raise_on_deleted_version=True)
    kv.undelete_secret_versions("app/db", versions=[2])
    assert kv.read_secret_version("app/db", raise_on_deleted_version=True)["data"]["data"]["password"] == "two"
    kv.destroy_secret_versions("app/db", versions=[1])
    meta = kv.read_secret_metadata("app/db")["data"]
    assert meta["current_version"] == 2 and meta["versions"]["1"]["destroyed"] is True
    with pytest.raises(hvac.exceptions.InvalidPath):
        kv.read_secret_version("app/db", version=1, raise_on_deleted_version=True)
    kv.delete_metadata_and_all_versions("app/db")
    with pytest.raises(hvac.exceptions.InvalidPath):
        kv.read_secret_metadata("app/db")


def test_kv2_check_and_set_and_max_versions(vault: Served) -> None:
    """cas must match the current version; cas_required refuses writes without it; max_versions trims."""
    kv = vault.client().secrets.kv.v2
    kv.create_or_update_secret("c", secret={"v": "1"}, cas=0)
    with pytest.raises(hvac.exceptions.InvalidRequest, match="check-and-set parameter did not match"):
        kv.create_or_update_secret("c", secret={"v": "2"}, cas=0)
    kv.update_metadata("c", max_versions=2, cas_required=True)
    with pytest.raises(hvac.exceptions.InvalidRequest, match="check-and-set parameter required"):
        kv.create_or_update_secret("c", secret={"v": "2"})
    kv.create_or_update_secret("c", secret={"v": "2"}, cas=1)
    kv.create_or_update_secret("c", secret={"v": "3"}, cas=2)
    meta = kv.read_secret_metadata("c")["data"]
    assert sorted(meta["versions"]) == ["2", "3"] and meta["oldest_version"] == 2 and meta["cas_required"] is True


# hvac's own patch() reads the secret without raise_on_deleted_version and warns about its own default.
@pytest.mark.filterwarnings("ignore:The raise_on_deleted_version parameter:DeprecationWarning")
def test_kv2_list_patch_config_and_custom_metadata(vault: Served) -> None:
    """LIST shows direct children and folders; PATCH merges; config and custom_metadata round-trip."""
    kv = vault.client().secrets.kv.v2
    for p in ("team/a", "team/b", "team/sub/c"):
        kv.create_or_update_secret(p, secret={"k": p})
    assert kv.list_secrets("team")["data"]["keys"] == ["a", "b", "sub/"]
    with pytest.raises(hvac.exceptions.InvalidPath):
        kv.list_secrets("nothing-here")
    kv.patch("team/a", secret={"extra": "x"})
    assert kv.read_secret_version("team/a", raise_on_deleted_version=True)["data"]["data"] == {
        "k": "team/a", "extra": "x"}
    kv.configure(max_versions=5, cas_required=False)
    assert kv.read_configuration()["data"]["max_versions"] == 5
    kv.update_metadata("team/b", custom_metadata={"owner": "ops"})
    assert kv.read_secret_metadata("team/b")["data"]["custom_metadata"] == {"owner": "ops"}


def test_kv1_mount(vault: Served) -> None:
    """A kv v1 mount enabled through sys/mounts: put, get, list, delete."""
    client = vault.client()
    client.sys.enable_secrets_engine("kv", path="legacy", options={"version": "1"})
    kv = client.secrets.kv.v1
    kv.create_or_update_secret("svc/token", secret={"t": "abc"}, mount_point="legacy")
    assert kv.read_secret("svc/token", mount_point="legacy")["data"] == {"t": "abc"}
    assert kv.list_secrets("svc", mount_point="legacy")["data"]["keys"] == ["token"]
    kv.delete_secret("svc/token", mount_point="legacy")
    with pytest.raises(hvac.exceptions.InvalidPath):
        kv.read_secret("svc/token", mount_point="legacy")
    assert "legacy/" in client.sys.list_mounted_secrets_engines()["data"]


@pytest.mark.parametrize("path", ["a/../b", "a//b", "%2e%2e/x", "a/%00b", "a/%07b", "./a"])
def test_odd_paths_are_refused_with_400(vault: Served, path: str) -> None:
    """Traversal, empty segments and control bytes in a KV path (sent verbatim, not normalized by a client):
    400 or 404 with Vault's error shape, and nothing stored outside the storage root's encoded names."""
    conn = http.client.HTTPConnection("127.0.0.1", vault.server.port, timeout=5)
    try:
        conn.request("POST", f"/v1/secret/data/{path}", body=json.dumps({"data": {"a": "b"}}),
                     headers={"X-Vault-Token": vault.root_token, "Content-Type": "application/json"})
        answer = conn.getresponse()
        status, body = answer.status, json.loads(answer.read())
    finally:
        conn.close()
    assert status in (400, 404), body
    assert body["errors"]
    root = vault.service.store.root  # type: ignore[attr-defined]
    assert all(p.resolve().is_relative_to(root.resolve()) for p in root.rglob("*"))
    assert not any(".." in p.name or p.name in (".", "..") for p in root.rglob("*"))


def test_oversized_and_malformed_bodies(vault: Served) -> None:
    """A body over the cap is 413, a non-object body 400: Vault-style errors, never a 500."""
    headers = {"X-Vault-Token": vault.root_token}
    big = requests.post(f"{vault.url}/v1/secret/data/big", data=b"{" + b" " * (2 << 20) + b"}", headers=headers,
                        timeout=10)
    assert big.status_code == 413 and "over" in big.json()["errors"][0]
    bad = requests.post(f"{vault.url}/v1/secret/data/x", data=b"[1, 2]", headers=headers, timeout=5)
    assert bad.status_code == 400 and bad.json()["errors"]
    broken = requests.post(f"{vault.url}/v1/secret/data/x", data=b"{nope", headers=headers, timeout=5)
    assert broken.status_code == 400 and "JSON" in broken.json()["errors"][0]
    missing = requests.get(f"{vault.url}/v1/nowhere/x", headers=headers, timeout=5)
    assert missing.status_code == 404 and missing.json()["errors"]
    deep = requests.post(f"{vault.url}/v1/secret/data/x", headers=headers, timeout=5,
                         data=b'{"data": {"a": ' + b"[" * 500 + b"]" * 500 + b"}}")
    assert deep.status_code == 400 and "deeper" in deep.json()["errors"][0]
    with pytest.raises(BadRequest):     # in-process, 990 levels parsed and then crashed the write (RecursionError)
        vault.service.handle(ApiRequest("POST", "secret/data/x", body_json(
            b'{"data": {"a": ' + b"[" * 990 + b"]" * 990 + b"}}"), token=vault.root_token))
    junk = requests.get(f"{vault.url}/v1/secret/data/x?version=abc", headers=headers, timeout=5)
    assert junk.status_code == 400 and "version" in junk.json()["errors"][0]
    assert requests.get(f"{vault.url}/v1/sys/health?sealedcode=zz", timeout=5).status_code == 200


def test_concurrent_writes_lose_no_version_and_cas_admits_one(vault: Served) -> None:
    """16 threads writing one secret: every write gets its own version (none lost); 16 threads each writing
    with cas=0 to a new secret: exactly one succeeds (review finding: read-check-write had no lock)."""
    import threading

    svc, token = vault.service, vault.root_token
    results: list[int] = []
    errors: list[str] = []

    def writer(n: int) -> None:
        for i in range(10):
            _, body = svc.handle(ApiRequest("POST", "secret/data/race", {"data": {"n": f"{n}-{i}"}}, token=token))
            assert body is not None
            results.append(body["data"]["version"])

    def cas_writer(n: int) -> None:
        try:
            svc.handle(ApiRequest("POST", "secret/data/once", {"options": {"cas": 0}, "data": {"n": str(n)}},
                                  token=token))
            results.append(-1)
        except BadRequest as err:
            errors.append(err.messages[0])

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == list(range(1, 161))
    results.clear()
    threads = [threading.Thread(target=cas_writer, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [-1] and len(errors) == 15 and all("did not match" in e for e in errors)
