"""Transit driven by the real `hvac` client over real HTTP on loopback (issue 11 item 9).

The tiny Starlette app below stands in for the vault service's router (reconcilers/vault/service/, built by
another part of the work): it only passes /v1/transit/<path> to `transit.api.handle` with a dict-backed store,
with no authentication or audit. Everything hvac sends and parses is real."""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Iterator
from typing import Any

import hvac  # type: ignore[import-untyped]  # hvac ships no type information
import pytest
from hvac.exceptions import InvalidPath, InvalidRequest  # type: ignore[import-untyped]
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from daemon.http.server import HttpServer
from reconcilers.vault.transit.api import handle
from tests.reconcilers.test_vault_transit import DictStore


def _app(store: DictStore) -> Starlette:
    async def transit(request: Request) -> Response:
        body: Any = {}
        raw = await request.body()
        if raw:
            body = await request.json()
        params = dict(request.query_params)
        status, out = handle(request.method, request.path_params["path"], {**params, **body}, store)
        return Response(status_code=204) if status == 204 else JSONResponse(out, status_code=status)

    return Starlette(routes=[Route("/v1/transit/{path:path}", transit,
                                   methods=["GET", "POST", "PUT", "DELETE", "LIST"])])


@pytest.fixture
def client() -> Iterator[hvac.Client]:
    # The daemon's own listener stack (httptools with the guard that carries Vault's LIST method through).
    server = HttpServer("127.0.0.1:0", _app(DictStore()))
    server.start()
    for _ in range(500):                      # bounded: 5 s at most
        if server.server.started:
            break
        time.sleep(0.01)
    assert server.server.started
    yield hvac.Client(url=f"http://127.0.0.1:{server.port}", token="unused-by-the-stand-in")
    server.stop()


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def test_hvac_transit_key_lifecycle_and_encryption(client: hvac.Client) -> None:
    """create, read, list, encrypt, decrypt, rotate, rewrap, config, delete: hvac's own methods and parsing."""
    t = client.secrets.transit
    t.create_key(name="app", key_type="aes256-gcm96")
    assert t.read_key(name="app")["data"]["type"] == "aes256-gcm96"
    assert t.list_keys()["data"]["keys"] == ["app"]
    ct = t.encrypt_data(name="app", plaintext=_b64(b"secret"), associated_data=_b64(b"ad"))["data"]["ciphertext"]
    assert ct.startswith("vault:v1:")
    back = t.decrypt_data(name="app", ciphertext=ct, associated_data=_b64(b"ad"))["data"]["plaintext"]
    assert base64.b64decode(back) == b"secret"
    plain_ct = t.encrypt_data(name="app", plaintext=_b64(b"no ad"))["data"]["ciphertext"]
    t.rotate_key(name="app")
    new = t.rewrap_data(name="app", ciphertext=plain_ct)["data"]["ciphertext"]
    assert new.startswith("vault:v2:")
    t.update_key_configuration(name="app", min_decryption_version=2, deletion_allowed=True)
    with pytest.raises(InvalidRequest, match="disallowed by policy"):
        t.decrypt_data(name="app", ciphertext=ct)
    batch = t.encrypt_data(name="app", batch_input=[{"plaintext": _b64(b"a")}, {"plaintext": _b64(b"b")}])
    assert len(batch["data"]["batch_results"]) == 2
    t.delete_key(name="app")
    with pytest.raises(InvalidPath, match="encryption key not found"):
        t.read_key(name="app")


def test_hvac_sign_verify_hmac_datakey_random_hash_export(client: hvac.Client) -> None:
    """The remaining transit methods hvac covers, against the same engine."""
    t = client.secrets.transit
    t.create_key(name="sig", key_type="ecdsa-p256", exportable=True)
    sig = t.sign_data(name="sig", hash_input=_b64(b"m"), marshaling_algorithm="jws")["data"]["signature"]
    assert t.verify_signed_data(name="sig", hash_input=_b64(b"m"), signature=sig,
                                marshaling_algorithm="jws")["data"]["valid"] is True
    assert "BEGIN EC PRIVATE KEY" in t.export_key(name="sig", key_type="signing-key")["data"]["keys"]["1"]
    t.create_key(name="h")
    mac = t.generate_hmac(name="h", hash_input=_b64(b"x"))["data"]["hmac"]
    assert t.verify_signed_data(name="h", hash_input=_b64(b"x"), hmac=mac)["data"]["valid"] is True
    with pytest.raises(InvalidRequest, match="not exportable"):
        t.export_key(name="h", key_type="encryption-key")
    key = t.generate_data_key(name="h", key_type="plaintext", bits=256)["data"]
    assert len(base64.b64decode(key["plaintext"])) == 32
    assert len(base64.b64decode(t.generate_random_bytes(n_bytes=24)["data"]["random_bytes"])) == 24
    assert t.hash_data(hash_input=_b64(b"hi"), algorithm="sha2-256")["data"]["sum"] == hashlib.sha256(
        b"hi").hexdigest()


def test_post_quantum_types_over_plain_http(client: hvac.Client) -> None:
    """hvac refuses key types it does not know client-side, so ml-dsa-65 and the ML-KEM hybrid are created
    with a plain POST through hvac's adapter; signing and data keys then go through hvac's methods."""
    client.adapter.post("/v1/transit/keys/pq-sig", json={"type": "ml-dsa-65"})
    client.adapter.post("/v1/transit/keys/pq-kem", json={"type": "ml-kem-768-x25519"})
    t = client.secrets.transit
    sig = t.sign_data(name="pq-sig", hash_input=_b64(b"m"))["data"]["signature"]
    assert t.verify_signed_data(name="pq-sig", hash_input=_b64(b"m"), signature=sig)["data"]["valid"] is True
    wrapped = t.generate_data_key(name="pq-kem", key_type="wrapped")["data"]
    assert "plaintext" not in wrapped
    opened = t.decrypt_data(name="pq-kem", ciphertext=wrapped["ciphertext"])["data"]["plaintext"]
    assert len(base64.b64decode(opened)) == 32
