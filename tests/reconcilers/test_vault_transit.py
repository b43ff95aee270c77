"""Transit (issue 11 item 9) through `reconcilers.vault.transit.api.handle` over a dict-backed store (the
KeyValueStore Protocol: what the vault service's barrier view provides): Vault's request and response shapes,
`vault:v<N>:` ciphertexts byte-compatible with Vault's layout, versions and their policy, signing, HMAC, data
keys (the post-quantum hybrid too), export only where allowed."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import time
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from reconcilers.vault.transit.api import handle

CIPHERTEXT = re.compile(r"^vault:v\d+:[A-Za-z0-9+/]+={0,2}$")


class DictStore:
    """The KeyValueStore Protocol over a dict; LIST returns direct children, folders with a trailing `/`."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    def get(self, path: str) -> bytes | None:
        return self.data.get(path)

    def put(self, path: str, value: bytes) -> None:
        self.data[path] = value

    def delete(self, path: str) -> None:
        self.data.pop(path, None)

    def list(self, prefix: str) -> list[str]:
        out = set()
        for path in self.data:
            if path.startswith(prefix):
                head, sep, _ = path[len(prefix):].partition("/")
                out.add(head + sep)
        return sorted(out)


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


@pytest.fixture
def store() -> DictStore:
    return DictStore()


def call(store: DictStore, method: str, path: str, body: dict[str, Any] | None = None, status: int = 200,
         ) -> dict[str, Any]:
    got, out = handle(method, path, body or {}, store)
    assert got == status, out
    return out


@pytest.mark.parametrize("key_type", ["aes256-gcm96", "chacha20-poly1305", "ml-kem-768-x25519"])
def test_encrypt_decrypt_round_trip_with_associated_data(store: DictStore, key_type: str) -> None:
    """Each encryption type round-trips; associated data must match; the ciphertext has Vault's shape."""
    call(store, "POST", "keys/k", {"type": key_type})
    ct = call(store, "POST", "encrypt/k", {"plaintext": b64(b"hello"), "associated_data": b64(b"ad")})["data"]
    assert CIPHERTEXT.match(ct["ciphertext"]) and ct["key_version"] == 1
    out = call(store, "POST", "decrypt/k", {"ciphertext": ct["ciphertext"], "associated_data": b64(b"ad")})
    assert base64.b64decode(out["data"]["plaintext"]) == b"hello"
    bad = call(store, "POST", "decrypt/k", {"ciphertext": ct["ciphertext"], "associated_data": b64(b"other")},
               status=400)
    assert bad == {"errors": ["cipher: message authentication failed"]}


@pytest.mark.parametrize(("key_type", "aead"), [("aes256-gcm96", AESGCM), ("chacha20-poly1305", ChaCha20Poly1305)])
def test_ciphertext_layout_is_vaults(store: DictStore, key_type: str, aead: Any) -> None:
    """nonce(12) || ciphertext || tag under the exported key, both ways: what we write opens with the raw key,
    and what an independent encryption in Vault's layout writes, we decrypt."""
    call(store, "POST", "keys/k", {"type": key_type, "exportable": True})
    raw_key = base64.b64decode(call(store, "GET", "export/encryption-key/k/1")["data"]["keys"]["1"])
    ct = call(store, "POST", "encrypt/k", {"plaintext": b64(b"layout")})["data"]["ciphertext"]
    blob = base64.b64decode(ct.split(":", 2)[2])
    assert aead(raw_key).decrypt(blob[:12], blob[12:], None) == b"layout"
    nonce = os.urandom(12)
    theirs = "vault:v1:" + b64(nonce + aead(raw_key).encrypt(nonce, b"from outside", None))
    out = call(store, "POST", "decrypt/k", {"ciphertext": theirs})
    assert base64.b64decode(out["data"]["plaintext"]) == b"from outside"


def test_versions_rotate_rewrap_and_min_decryption_version(store: DictStore) -> None:
    """Rotation adds v2; v1 ciphertexts still decrypt until min_decryption_version moves past them; rewrap
    brings them to the latest version; min_decryption_version cannot pass the latest."""
    call(store, "POST", "keys/k")
    v1 = call(store, "POST", "encrypt/k", {"plaintext": b64(b"x")})["data"]["ciphertext"]
    assert call(store, "POST", "keys/k/rotate")["data"]["latest_version"] == 2
    v2 = call(store, "POST", "encrypt/k", {"plaintext": b64(b"y")})["data"]["ciphertext"]
    assert v1.startswith("vault:v1:") and v2.startswith("vault:v2:")
    rewrapped = call(store, "POST", "rewrap/k", {"ciphertext": v1})["data"]
    assert rewrapped["key_version"] == 2 and rewrapped["ciphertext"].startswith("vault:v2:")
    call(store, "POST", "keys/k/config", {"min_decryption_version": 2})
    refused = call(store, "POST", "decrypt/k", {"ciphertext": v1}, status=400)
    assert "disallowed by policy" in refused["errors"][0]
    out = call(store, "POST", "decrypt/k", {"ciphertext": rewrapped["ciphertext"]})["data"]
    assert base64.b64decode(out["plaintext"]) == b"x"
    assert "latest key version is 2" in call(store, "POST", "keys/k/config", {"min_decryption_version": 3},
                                             status=400)["errors"][0]
    old = call(store, "POST", "encrypt/k", {"plaintext": b64(b"z"), "key_version": 1}, status=400)
    assert old["errors"]


def test_batch_input_keeps_order_references_and_reports_item_errors(store: DictStore) -> None:
    """batch_input results come back in order with their references; a bad item is an error item and the
    status is 400, or partial_failure_response_code when set."""
    call(store, "POST", "keys/k")
    items = [{"plaintext": b64(b"a"), "reference": "r1"}, {"plaintext": "not base64!", "reference": "r2"},
             {"plaintext": b64(b"c")}]
    status, out = handle("POST", "encrypt/k", {"batch_input": items, "partial_failure_response_code": 207}, store)
    results = out["data"]["batch_results"]
    assert status == 207 and [r.get("reference") for r in results] == ["r1", "r2", None]
    assert "error" in results[1] and CIPHERTEXT.match(results[0]["ciphertext"])
    back = call(store, "POST", "decrypt/k", {"batch_input": [{"ciphertext": results[0]["ciphertext"]},
                                                             {"ciphertext": results[2]["ciphertext"]}]})
    assert [base64.b64decode(r["plaintext"]) for r in back["data"]["batch_results"]] == [b"a", b"c"]
    assert handle("POST", "encrypt/k", {"batch_input": items[1:2]}, store)[0] == 400
    assert handle("POST", "encrypt/k", {"batch_input": items, "partial_failure_response_code": 503}, store)[0] == 400


def test_derived_keys_need_their_context(store: DictStore) -> None:
    """A derived key (upserted by an encrypt with a context) decrypts only with the same context."""
    ct = call(store, "POST", "encrypt/d", {"plaintext": b64(b"t"), "context": b64(b"tenant-1")})["data"]
    assert call(store, "GET", "keys/d")["data"]["derived"] is True
    assert call(store, "POST", "decrypt/d", {"ciphertext": ct["ciphertext"], "context": b64(b"tenant-2")},
                status=400)
    assert "missing 'context'" in call(store, "POST", "decrypt/d", {"ciphertext": ct["ciphertext"]},
                                       status=400)["errors"][0]
    out = call(store, "POST", "decrypt/d", {"ciphertext": ct["ciphertext"], "context": b64(b"tenant-1")})
    assert base64.b64decode(out["data"]["plaintext"]) == b"t"


def test_export_only_where_allowed_and_exportable_cannot_be_undone(store: DictStore) -> None:
    """Private material is refused until `exportable`; public keys always; exportable stays on."""
    call(store, "POST", "keys/s", {"type": "ed25519"})
    assert call(store, "GET", "export/signing-key/s", status=400) == {
        "errors": ["private key material is not exportable"]}
    public = call(store, "GET", "export/public-key/s")["data"]["keys"]["1"]
    call(store, "POST", "keys/s/config", {"exportable": True})
    private = base64.b64decode(call(store, "GET", "export/signing-key/s/latest")["data"]["keys"]["1"])
    sk = ed25519.Ed25519PrivateKey.from_private_bytes(private[:32])
    assert b64(sk.public_key().public_bytes_raw()) == public and private[32:] == base64.b64decode(public)
    assert "cannot be disabled" in call(store, "POST", "keys/s/config", {"exportable": False},
                                        status=400)["errors"][0]


def test_delete_needs_deletion_allowed_and_list_shows_keys(store: DictStore) -> None:
    """LIST names the keys (404 when none, as Vault); DELETE is refused until deletion_allowed."""
    call(store, "LIST", "keys", status=404)
    call(store, "POST", "keys/a")
    call(store, "POST", "keys/b", {"type": "ecdsa-p256"})
    assert call(store, "LIST", "keys")["data"]["keys"] == ["a", "b"]
    assert call(store, "DELETE", "keys/a", status=400) == {"errors": ["deletion is not allowed for this key"]}
    call(store, "POST", "keys/a/config", {"deletion_allowed": True})
    call(store, "DELETE", "keys/a", status=204)
    assert call(store, "GET", "keys/a", status=404) == {"errors": ["encryption key not found"]}


@pytest.mark.parametrize("key_type", ["ed25519", "ecdsa-p256", "ml-dsa-65"])
def test_sign_and_verify(store: DictStore, key_type: str) -> None:
    """A signature verifies for its input only, and for no other key version after rotation."""
    call(store, "POST", "keys/s", {"type": key_type})
    sig = call(store, "POST", "sign/s", {"input": b64(b"msg")})["data"]
    assert CIPHERTEXT.match(sig["signature"]) and sig["key_version"] == 1
    assert call(store, "POST", "verify/s", {"input": b64(b"msg"), "signature": sig["signature"]})["data"] == {
        "valid": True}
    assert call(store, "POST", "verify/s", {"input": b64(b"msh"), "signature": sig["signature"]})["data"] == {
        "valid": False}
    call(store, "POST", "keys/s/rotate")
    forged = sig["signature"].replace("vault:v1:", "vault:v2:")
    assert call(store, "POST", "verify/s", {"input": b64(b"msg"), "signature": forged})["data"]["valid"] is False


def test_ecdsa_marshaling_prehashed_and_public_key(store: DictStore) -> None:
    """JWS marshaling is raw r||s in unpadded base64url; a prehashed SHA-256 input signs the digest; both verify
    with the PEM public key Vault shows."""
    call(store, "POST", "keys/e", {"type": "ecdsa-p256"})
    pem = call(store, "GET", "keys/e")["data"]["keys"]["1"]["public_key"]
    public = serialization.load_pem_public_key(pem.encode())
    assert isinstance(public, ec.EllipticCurvePublicKey)
    jws = call(store, "POST", "sign/e/sha2-256", {"input": b64(b"m"), "marshaling_algorithm": "jws"})["data"]
    raw = base64.urlsafe_b64decode(jws["signature"].split(":", 2)[2] + "==")
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    public.verify(der, b"m", ec.ECDSA(hashes.SHA256()))
    digest = hashlib.sha256(b"m").digest()
    pre = call(store, "POST", "sign/e", {"input": b64(digest), "prehashed": True})["data"]["signature"]
    public.verify(base64.b64decode(pre.split(":", 2)[2]), b"m", ec.ECDSA(hashes.SHA256()))
    assert call(store, "POST", "verify/e", {"input": b64(b"m"), "signature": jws["signature"],
                                            "marshaling_algorithm": "jws"})["data"]["valid"] is True


def test_hmac_and_its_verification(store: DictStore) -> None:
    """hmac gives vault:v1:<base64 HMAC-SHA256>; verify with `hmac` checks it; another algorithm differs."""
    call(store, "POST", "keys/h", {"exportable": True})
    mac = call(store, "POST", "hmac/h", {"input": b64(b"data")})["data"]["hmac"]
    key = base64.b64decode(call(store, "GET", "export/hmac-key/h/1")["data"]["keys"]["1"])
    import hmac as std_hmac

    assert mac == "vault:v1:" + b64(std_hmac.new(key, b"data", "sha256").digest())
    assert call(store, "POST", "verify/h", {"input": b64(b"data"), "hmac": mac})["data"]["valid"] is True
    assert call(store, "POST", "hmac/h/sha2-512", {"input": b64(b"data")})["data"]["hmac"] != mac


@pytest.mark.parametrize("key_type", ["aes256-gcm96", "ml-kem-768-x25519"])
def test_datakey_plaintext_and_wrapped(store: DictStore, key_type: str) -> None:
    """datakey/plaintext returns the key and its wrapping; the wrapping decrypts to it; wrapped omits it."""
    call(store, "POST", "keys/dk", {"type": key_type})
    out = call(store, "POST", "datakey/plaintext/dk", {"bits": 512})["data"]
    assert len(base64.b64decode(out["plaintext"])) == 64
    back = call(store, "POST", "decrypt/dk", {"ciphertext": out["ciphertext"]})["data"]["plaintext"]
    assert back == out["plaintext"]
    wrapped = call(store, "POST", "datakey/wrapped/dk")["data"]
    assert "plaintext" not in wrapped and CIPHERTEXT.match(wrapped["ciphertext"])


def test_random_and_hash(store: DictStore) -> None:
    """random gives the asked number of bytes (path or body, hex or base64); hash matches hashlib."""
    assert len(bytes.fromhex(call(store, "POST", "random/16", {"format": "hex"})["data"]["random_bytes"])) == 16
    assert len(base64.b64decode(call(store, "POST", "random/platform", {"bytes": 8})["data"]["random_bytes"])) == 8
    call(store, "POST", "random", {"bytes": 10**9}, status=400)
    assert call(store, "POST", "hash", {"input": b64(b"hello")})["data"]["sum"] == hashlib.sha256(b"hello").hexdigest()
    out = call(store, "POST", "hash/sha2-512", {"input": b64(b"hello"), "format": "base64"})["data"]["sum"]
    assert out == b64(hashlib.sha512(b"hello").digest())


@pytest.mark.parametrize(("method", "path", "body", "status"), [
    ("POST", "decrypt/k", {"ciphertext": "nope"}, 400),
    ("POST", "decrypt/k", {"ciphertext": "vault:v9:AAAA"}, 400),
    ("POST", "decrypt/k", {"ciphertext": "vault:v1:AAAA"}, 400),
    ("POST", "keys/bad name", {}, 400),
    ("POST", "keys/x", {"type": "rsa-512"}, 400),
    ("GET", "encrypt/k", {}, 405),
    ("POST", "nothing/here", {}, 404),
    ("POST", "encrypt/k", {"batch_input": "x"}, 400),
])
def test_bad_requests_answer_vault_errors(store: DictStore, method: str, path: str, body: dict[str, Any],
                                          status: int) -> None:
    """Malformed input answers a 4xx with {"errors": [...]}, never a 500."""
    call(store, "POST", "keys/k")
    got, out = handle(method, path, body, store)
    assert got == status and isinstance(out["errors"], list), out


def test_key_material_is_stored_under_policy_paths_only(store: DictStore) -> None:
    """Everything the engine keeps is under policy/<name> in the store it was given."""
    call(store, "POST", "keys/one")
    call(store, "POST", "keys/two", {"type": "ml-dsa-65"})
    assert sorted(store.data) == ["policy/one", "policy/two"]


def test_declared_keys_plan_create_config_and_scheduled_rotation(store: DictStore) -> None:
    """Keys declared in the repo: a missing one is created with its policy; a changed policy is a config
    change; a key older than its auto_rotate_period is rotated; a changed type is a problem, never a change;
    plans carry names and policy only (no key material)."""
    from reconcilers.vault.transit import declare

    declared, problems = declare.declared_from({"keys": {
        "app": {"type": "aes256-gcm96", "exportable": True, "auto_rotate_period": "1h"},
        "sig": {"type": "ml-dsa-65"}, "bad name": {}}})
    assert problems and "bad name" in problems[0]
    changes, problems = declare.plan(declared, store, now=1_000.0)
    assert [(c.name, c.kind) for c in changes] == [("app", "create"), ("sig", "create")] and problems == []
    for change in changes:
        declare.apply(change, declared, store)
    assert call(store, "GET", "keys/app")["data"]["exportable"] is True
    created = call(store, "GET", "keys/app")["data"]["keys"]["1"]
    assert declare.plan(declared, store, now=created + 3000)[0] == []
    later = declare.plan(declared, store, now=created + 3601)[0]
    assert [(c.name, c.kind) for c in later] == [("app", "rotate")]
    declare.apply(later[0], declared, store)
    assert call(store, "GET", "keys/app")["data"]["latest_version"] == 2
    assert declare.plan(declared, store, now=time.time() + 60)[0] == []      # v2 is new
    retyped = {**declared, "sig": declare.Declared("sig", "ed25519")}
    _, problems = declare.plan(retyped, store, now=0)
    assert problems and "type never changes" in problems[0]
    tightened = {**declared, "app": declare.Declared("app", exportable=True, deletion_allowed=True,
                                                     min_decryption_version=2, auto_rotate_period=3600)}
    changes, _ = declare.plan(tightened, store, now=time.time())
    assert [(c.kind, dict(c.fields)) for c in changes] == [
        ("config", {"deletion_allowed": True, "min_decryption_version": 2})]
    declare.apply(changes[0], tightened, store)
    assert call(store, "GET", "keys/app")["data"]["min_decryption_version"] == 2
    for change in changes:
        assert all(not isinstance(v, bytes) for v in change.fields.values())


def test_junk_input_never_answers_5xx(store: DictStore) -> None:
    """A bounded, seeded run of odd bodies on every route (wrong types, huge numbers, nested junk, bad base64,
    forged ciphertexts) answers 2xx or 4xx with Vault's shape, never 500."""
    import random

    rng = random.Random(11)
    for key_type in ("aes256-gcm96", "ecdsa-p256", "ml-dsa-65", "ml-kem-768-x25519", "ed25519"):
        call(store, "POST", f"keys/{key_type}", {"type": key_type})
    junk: list[Any] = [None, True, -1, 2**70, 1.5, "", "x" * 300, "vault:v1:", "vault:v1:!!", "vault:vx:AAAA",
                       "vault:v1:" + b64(os.urandom(40)), b64(b"ok"), [], {}, [{"plaintext": 3}], {"a": [1, {}]}]
    fields = ["plaintext", "ciphertext", "input", "signature", "hmac", "context", "associated_data", "key_version",
              "batch_input", "bits", "bytes", "format", "type", "hash_algorithm", "marshaling_algorithm",
              "prehashed", "min_decryption_version", "min_encryption_version", "exportable", "deletion_allowed",
              "auto_rotate_period", "partial_failure_response_code"]
    paths = ["keys", "encrypt", "decrypt", "rewrap", "sign", "verify", "hmac", "datakey/plaintext", "datakey/wrapped",
             "export/encryption-key", "export/signing-key", "export/public-key", "random", "hash"]
    for _ in range(1500):
        name = rng.choice(["aes256-gcm96", "ecdsa-p256", "ml-dsa-65", "ml-kem-768-x25519", "ed25519", "nope"])
        path = f"{rng.choice(paths)}/{name}" + rng.choice(["", "", "/config", "/rotate", "/sha2-512", "/1"])
        body = {rng.choice(fields): rng.choice(junk) for _ in range(rng.randint(0, 4))}
        status, out = handle(rng.choice(["GET", "POST", "PUT", "DELETE", "LIST"]), path, body, store)
        assert status < 500, (path, body, out)
        assert status == 204 or "data" in out or isinstance(out.get("errors"), list), (path, body, out)
