"""Hostile requests never crash the engines: every combination of path and wrongly typed field answers a 4xx
(no exception escapes `handle`, no 5xx), and nothing is half-written."""

from __future__ import annotations

import itertools
from typing import Any

from reconcilers.vault.database import api as db_api
from reconcilers.vault.pki import api as pki_api
from reconcilers.vault.pki.storage import MemoryStore

ODD: list[Any] = [None, 7, -1, 1e308, True, "", "x" * 5000, [], ["a", 3], {}, {"a": {"b": []}}, "../../etc",
                  "\x00\xff", "72h" * 20]

PKI_CALLS = [("POST", "root/generate/internal", ("common_name", "ttl", "key_type", "key_bits", "max_path_length")),
             ("POST", "roles/web", ("allowed_domains", "allow_subdomains", "ttl", "max_ttl", "key_type", "key_bits",
                                    "key_usage", "ext_key_usage")),
             ("POST", "issue/web", ("common_name", "alt_names", "ip_sans", "ttl", "format")),
             ("POST", "sign/web", ("csr", "common_name", "ttl")),
             ("POST", "revoke", ("serial_number",)),
             ("POST", "intermediate/set-signed", ("certificate",)),
             ("POST", "root/sign-intermediate", ("csr", "ttl")),
             ("POST", "config/ca", ("pem_bundle",)),
             ("POST", "tidy", ("safety_buffer", "tidy_cert_store", "tidy_revoked_certs")),
             ("POST", "ocsp", ("_raw",))]


def _pki_mount() -> MemoryStore:
    store = MemoryStore()
    assert pki_api.handle("POST", "root/generate/internal", {"common_name": "ca", "key_type": "ec"}, store)[0] == 200
    assert pki_api.handle("POST", "roles/web", {"allow_any_name": True, "key_type": "ec"}, store)[0] == 204
    return store


def test_pki_answers_4xx_to_every_odd_field() -> None:
    store = _pki_mount()
    for (method, path, fields), value in itertools.product(PKI_CALLS, ODD):
        for field in fields:
            status, reply = pki_api.handle(method, path, {field: value}, store)
            assert status < 500, (path, field, value, reply)
            if status >= 400:
                assert reply["errors"] and all(isinstance(e, str) for e in reply["errors"])
    for odd_path in ("", "/", "cert/", "cert/zz", "ocsp/%%%", "roles/../x", "issue/" + "a" * 500, "crl/x/y"):
        for method in ("GET", "POST", "DELETE", "LIST", "PATCH"):
            assert pki_api.handle(method, odd_path, {}, store)[0] < 500


def test_database_answers_4xx_to_every_odd_field() -> None:
    store = MemoryStore()
    base = {"plugin_name": "postgresql", "connection_url": "postgresql://{{username}}:{{password}}@127.0.0.1:1/x",
            "username": "u", "password": "p", "allowed_roles": "*", "verify_connection": False}
    assert db_api.handle("POST", "config/main", base, store)[0] == 204
    calls = [("POST", "config/main", tuple(base)),
             ("POST", "roles/app", ("db_name", "creation_statements", "default_ttl", "max_ttl")),
             ("POST", "static-roles/s", ("db_name", "username", "rotation_period", "rotation_statements"))]
    for (method, path, fields), value in itertools.product(calls, ODD):
        for field in fields:
            status, reply = db_api.handle(method, path, {**({} if path != "config/main" else base), field: value},
                                          store)
            assert status < 500 or status == 502, (path, field, value, reply)
    for path in ("lookup", "renew", "revoke", "revoke-prefix/x", "tidy", "lookup/", ""):
        for value in ODD:
            status, _ = db_api.sys_leases("PUT", path, {"lease_id": value, "increment": value}, store)
            assert status < 500, (path, value)
