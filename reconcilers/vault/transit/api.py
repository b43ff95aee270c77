"""Transit's request handling: Vault's paths, bodies, responses and errors, without HTTP.

`handle(method, path, body, store)` takes the method, the path relative to the mount ("encrypt/my-key"), the
decoded JSON body and the mount's store, and returns the status and the Vault JSON body: {"data": {...}} or
{"errors": [...]}. Routes (POST and PUT are the same; LIST also as GET with list=true):

    keys                           LIST
    keys/<name>                    POST create, GET read, DELETE (only with deletion_allowed)
    keys/<name>/config             POST min_decryption_version, min_encryption_version, deletion_allowed, ...
    keys/<name>/rotate             POST
    export/<kind>/<name>[/<ver>]   GET (encryption-key, signing-key, hmac-key: exportable keys only; public-key)
    encrypt|decrypt|rewrap/<name>  POST (batch_input, associated_data, context, key_version, reference)
    datakey/<plaintext|wrapped>/<name>   POST (bits, context)
    sign|verify/<name>[/<hash>]    POST (hash_algorithm, prehashed, marshaling_algorithm; verify takes hmac too)
    hmac/<name>[/<hash>]           POST
    random[/<source>][/<bytes>]    POST (bytes, format)
    hash[/<algorithm>]             POST (input, algorithm, format)
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Callable, Mapping
from typing import Any

from reconcilers.vault.transit import keys as k
from reconcilers.vault.transit import manage, ops
from reconcilers.vault.transit.keys import KeyValueStore, TransitError, b64d, b64e

MAX_BATCH = 10_000
MAX_RANDOM = 128 * 1024
Result = tuple[int, dict[str, Any]]


def handle(method: str, path: str, body: Mapping[str, Any], store: KeyValueStore) -> Result:
    """One transit request (see the module docstring); never raises."""
    try:
        if body is None or not isinstance(body, Mapping):
            body = {}
        return _route(method.upper(), [p for p in path.strip("/").split("/") if p], body, store)
    except TransitError as err:
        return err.status, {"errors": [err.message]}
    except Exception as err:  # noqa: BLE001 a bug answers 500 with its class only: never key material
        return 500, {"errors": [f"internal error in the transit engine ({type(err).__name__})"]}


def _route(method: str, parts: list[str], body: Mapping[str, Any], store: KeyValueStore) -> Result:
    head = parts[0] if parts else ""
    write = method in ("POST", "PUT")
    if head == "keys":
        if len(parts) == 1 and (method == "LIST" or (method == "GET" and manage.as_bool(body.get("list")))):
            found = k.names(store)
            return (200, {"data": {"keys": found}}) if found else (404, {"errors": []})
        if len(parts) == 2:
            if write:
                return manage.create(parts[1], body, store)
            if method == "GET":
                return 200, {"data": manage.describe(k.need(store, parts[1]))}
            if method == "DELETE":
                return manage.delete(parts[1], store)
        if len(parts) == 3 and write and parts[2] == "config":
            return manage.config(parts[1], body, store)
        if len(parts) == 3 and write and parts[2] == "rotate":
            with k.WRITE_LOCK:
                key = k.rotated(k.need(store, parts[1]))
                k.save(store, key)
            return 200, {"data": manage.describe(key)}
    elif head == "export" and method == "GET" and len(parts) in (3, 4):
        key = k.need(store, parts[2])
        return 200, {"data": ops.export(key, parts[1], parts[3] if len(parts) == 4 else None)}
    elif head in ("encrypt", "decrypt", "rewrap") and write and len(parts) == 2:
        return _crypt(head, parts[1], body, store)
    elif head == "datakey" and write and len(parts) == 3:
        return _datakey(parts[1], parts[2], body, store)
    elif head in ("sign", "verify", "hmac") and write and len(parts) in (2, 3):
        return _signing(head, parts[1], parts[2] if len(parts) == 3 else None, body, store)
    elif head == "random" and write and len(parts) <= 3:
        return _random(parts[1:], body)
    elif head == "hash" and write and len(parts) <= 2:
        return _hash(parts[1] if len(parts) == 2 else None, body)
    known = head in ("keys", "export", "encrypt", "decrypt", "rewrap", "datakey", "sign", "verify", "hmac",
                     "random", "hash")
    if known:
        return 405, {"errors": [f"unsupported operation {method} on {'/'.join(parts)[:200]}"]}
    return 404, {"errors": [f"unsupported path {'/'.join(parts)[:200]}"]}


# batches ---------------------------------------------------------------------------------------------------
def _batch(body: Mapping[str, Any], one: Callable[[Mapping[str, Any]], dict[str, Any]]) -> Result:
    """One item (the body) or `batch_input`: results in order, failures as {"error": ...} items."""
    items = body.get("batch_input")
    if items is None:
        return 200, {"data": one(body)}
    if not isinstance(items, list) or not items or len(items) > MAX_BATCH:
        raise TransitError(f"batch_input must be a list of 1 to {MAX_BATCH} objects")
    shared = {key: v for key, v in body.items() if key != "batch_input"}
    results: list[dict[str, Any]] = []
    failed = 0
    for item in items:
        ref = item.get("reference") if isinstance(item, Mapping) else None
        try:
            if not isinstance(item, Mapping):
                raise TransitError("each batch_input item must be an object")
            result = one({**shared, **item})
        except TransitError as err:
            failed += 1
            result = {"error": err.message}
        if ref is not None:
            result["reference"] = ref
        results.append(result)
    status = 200
    if failed:
        partial = body.get("partial_failure_response_code")
        status = 400 if failed == len(items) or partial is None else manage.as_int(partial,
                                                                                  "partial_failure_response_code")
        if not 200 <= status <= 499:
            status = 400                      # a 5xx would claim a server fault; a 1xx is no answer
    return status, {"data": {"batch_results": results}}


def _opt_b64(body: Mapping[str, Any], field: str) -> bytes | None:
    value = body.get(field)
    return None if value in (None, "") else b64d(value, field)


def _version(body: Mapping[str, Any]) -> int | None:
    value = body.get("key_version")
    return None if value in (None, "", 0) else manage.as_int(value, "key_version")


def _crypt(op: str, name: str, body: Mapping[str, Any], store: KeyValueStore) -> Result:
    key = k.load(store, name)
    if key is None and op == "encrypt":
        with k.WRITE_LOCK:                 # upsert, as Vault: encrypting with a new name creates the key
            key = k.load(store, name)
            if key is None:
                derived = bool(body.get("context")) or any(
                    isinstance(i, Mapping) and i.get("context") for i in body.get("batch_input") or [])
                key = k.create(name, str(body.get("type") or "aes256-gcm96"), derived=derived)
                k.save(store, key)
    if key is None:
        raise TransitError("encryption key not found", 400 if op == "decrypt" else 404)
    found = key

    def one(item: Mapping[str, Any]) -> dict[str, Any]:
        context, aad = _opt_b64(item, "context"), _opt_b64(item, "associated_data")
        if op == "encrypt":
            if "plaintext" not in item:
                raise TransitError("missing plaintext to encrypt")
            ct, n = ops.encrypt(found, b64d(item["plaintext"], "plaintext"), version=_version(item),
                                context=context, aad=aad)
            return {"ciphertext": ct, "key_version": n}
        plain = ops.decrypt(found, item.get("ciphertext"), context=context, aad=aad)
        if op == "decrypt":
            return {"plaintext": b64e(plain)}
        ct, n = ops.encrypt(found, plain, version=_version(item), context=context, aad=aad)
        return {"ciphertext": ct, "key_version": n}

    return _batch(body, one)


def _datakey(kind: str, name: str, body: Mapping[str, Any], store: KeyValueStore) -> Result:
    if kind not in ("plaintext", "wrapped"):
        raise TransitError(f"invalid data key type {kind!r}: plaintext or wrapped")
    key = k.need(store, name)
    bits = manage.as_int(body.get("bits", 256), "bits")
    if bits not in (128, 256, 512):
        raise TransitError("invalid bits value: 128, 256 or 512")
    data_key = os.urandom(bits // 8)
    ct, n = ops.encrypt(key, data_key, version=_version(body), context=_opt_b64(body, "context"))
    out: dict[str, Any] = {"ciphertext": ct, "key_version": n}
    if kind == "plaintext":
        out["plaintext"] = b64e(data_key)
    return 200, {"data": out}


def _signing(op: str, name: str, path_algorithm: str | None, body: Mapping[str, Any],
             store: KeyValueStore) -> Result:
    key = k.need(store, name)

    def one(item: Mapping[str, Any]) -> dict[str, Any]:
        data = b64d(item.get("input"), "input")
        algorithm = path_algorithm or item.get("hash_algorithm") or item.get("algorithm")
        prehashed = manage.as_bool(item.get("prehashed"))
        marshaling = item.get("marshaling_algorithm")
        if op == "hmac":
            return {"hmac": ops.hmac(key, data, version=_version(item), algorithm=algorithm),
                    "key_version": _version(item) or key.latest_version}
        if op == "sign":
            sig, n = ops.sign(key, data, version=_version(item), algorithm=algorithm, prehashed=prehashed,
                              marshaling=marshaling)
            return {"signature": sig, "key_version": n}
        if item.get("hmac") is not None:
            return {"valid": ops.verify_hmac(key, data, item["hmac"], algorithm=algorithm)}
        if item.get("signature") is None:
            raise TransitError("missing signature or hmac to verify")
        return {"valid": ops.verify(key, data, item["signature"], algorithm=algorithm, prehashed=prehashed,
                                    marshaling=marshaling)}

    return _batch(body, one)


def _random(parts: list[str], body: Mapping[str, Any]) -> Result:
    count: Any = body.get("bytes", 32)
    for part in parts:
        if part.isdigit():
            count = part
        elif part not in ("platform", "seal", "all"):
            raise TransitError(f"unsupported random source {part[:40]!r}: platform, seal or all")
    n = manage.as_int(count, "bytes")
    if not 1 <= n <= MAX_RANDOM:
        raise TransitError(f"bytes must be between 1 and {MAX_RANDOM}")
    raw = os.urandom(n)
    fmt = str(body.get("format") or "base64")
    if fmt not in ("base64", "hex"):
        raise TransitError("format must be base64 or hex")
    return 200, {"data": {"random_bytes": b64e(raw) if fmt == "base64" else raw.hex()}}


def _hash(path_algorithm: str | None, body: Mapping[str, Any]) -> Result:
    data = b64d(body.get("input"), "input")
    algorithm = ops.hash_name(path_algorithm or body.get("algorithm"))
    fmt = str(body.get("format") or "hex")
    if fmt not in ("base64", "hex"):
        raise TransitError("format must be hex or base64")
    raw = hashlib.new(algorithm.replace("sha2-", "sha").replace("sha3-", "sha3_"), data).digest()
    return 200, {"data": {"sum": raw.hex() if fmt == "hex" else base64.b64encode(raw).decode()}}
