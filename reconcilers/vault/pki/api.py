"""The PKI engine's request handler: Vault's paths under the mount, to the functions that serve them.

    handle(method, path, body, store, *, now=None) -> (status, body)

`method` is GET, POST, PUT, DELETE or LIST; `path` is relative to the mount ("issue/web"); `body` is the
request's JSON object (empty for GET). The answer is Vault's JSON: {"data": {...}} (and "warnings"), or
{"errors": [...]} with a 4xx status. Three answers are not JSON, as in Vault: `ca`, `crl` (DER), `ca/pem`,
`crl/pem`, `ca_chain` (PEM) and `ocsp` (DER). They come back as {"_raw": bytes, "_content_type": "..."}: the
service writes `_raw` as the response body with that content type. `POST ocsp` takes the DER request as
body {"_raw": bytes} (its content type is application/ocsp-request, not JSON). `now` is for tests.

Authorization and audit are the service's, in front of this.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from collections.abc import Callable, Mapping
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from reconcilers.vault.pki import ca, certbuild, issue, ocsp, revocation
from reconcilers.vault.pki.errors import PkiError, PkiNotConfigured, PkiNotFound
from reconcilers.vault.pki.issuer import Issuer
from reconcilers.vault.pki.roles import Role
from reconcilers.vault.pki.storage import KeyValueStore, get_json, put_json

Reply = tuple[int, dict[str, Any]]
DER_CERT = "application/pkix-cert"
DER_CRL = "application/pkix-crl"
PEM = "application/pem-certificate-chain"


def handle(method: str, path: str, body: Mapping[str, Any], store: KeyValueStore, *,
           now: dt.datetime | None = None) -> Reply:
    """Serve one request under the mount (see the module's docstring)."""
    moment = now or dt.datetime.now(dt.UTC)
    method = method.upper()
    trimmed = path.lstrip("/")
    if method == "GET" and trimmed.startswith("ocsp/"):
        # The request is base64 in the path: it may hold "/", "//" or end with "/", which splitting would lose.
        parts = ["ocsp", trimmed[len("ocsp/"):]]
    else:
        parts = [p for p in path.strip("/").split("/") if p]
    try:
        return _route(method, parts, body, store, moment)
    except PkiError as err:
        return err.status, {"errors": [err.render()]}
    except (ValueError, TypeError) as err:
        # Malformed stored or sent data the checks above missed: a 400 with the reason, never a traceback.
        return 400, {"errors": [f"{path}: malformed request ({err})"]}


def _data(data: dict[str, Any], status: int = 200) -> Reply:
    warnings = data.pop("warnings", None)
    reply: dict[str, Any] = {"data": data}
    if warnings:
        reply["warnings"] = warnings
    return status, reply


def _raw(content: bytes, content_type: str) -> Reply:
    return 200, {"_raw": content, "_content_type": content_type}


def _issuer_or_none(store: KeyValueStore) -> Issuer | None:
    try:
        return ca.load(store)
    except PkiNotConfigured:
        return None


def _route(method: str, parts: list[str], body: Mapping[str, Any], store: KeyValueStore, now: dt.datetime) -> Reply:
    head = parts[0] if parts else ""
    write = method in ("POST", "PUT")
    handler = _ROUTES.get((head, len(parts), "write" if write else method))
    if head == "ocsp" and method == "GET" and len(parts) >= 2:
        handler = _ocsp_get
    if handler is None:
        if any(key[0] == head for key in _ROUTES):
            raise PkiError(f"{method} is not supported on {'/'.join(parts)}")
        raise PkiNotFound(f"unsupported path {'/'.join(parts)!r} on a PKI mount")
    return handler(parts, body, store, now)


# --- the CA -------------------------------------------------------------------------------------------------


def _root(parts: list[str], body: Mapping[str, Any], store: KeyValueStore, now: dt.datetime) -> Reply:
    if parts[1] == "generate" and len(parts) == 3 and parts[2] in ("internal", "exported"):
        return _data(ca.generate_root(store, body, parts[2] == "exported", now))
    if parts[1:] == ["sign-intermediate"]:
        return _data(ca.sign_intermediate(store, body, now))
    raise PkiNotFound(f"unsupported path {'/'.join(parts)!r}")


def _root_delete(parts: list[str], body: Mapping[str, Any], store: KeyValueStore, now: dt.datetime) -> Reply:
    ca.delete_root(store)
    return 204, {}


def _intermediate(parts: list[str], body: Mapping[str, Any], store: KeyValueStore, now: dt.datetime) -> Reply:
    if parts[1] == "generate" and len(parts) == 3 and parts[2] in ("internal", "exported"):
        return _data(ca.generate_intermediate(store, body, parts[2] == "exported"))
    if parts[1:] == ["set-signed"]:
        return _data(ca.set_signed(store, body, now))
    raise PkiNotFound(f"unsupported path {'/'.join(parts)!r}")


def _config_ca(parts: list[str], body: Mapping[str, Any], store: KeyValueStore, now: dt.datetime) -> Reply:
    if parts[1] != "ca":
        raise PkiNotFound(f"unsupported path {'/'.join(parts)!r}")
    return _data(ca.import_bundle(store, body, now))


def _ca_raw(parts: list[str], body: Mapping[str, Any], store: KeyValueStore, now: dt.datetime) -> Reply:
    issuer = ca.load(store)
    if len(parts) == 1:
        return _raw(issuer.cert.public_bytes(serialization.Encoding.DER), DER_CERT)
    if parts[1] == "pem":
        return _raw(issuer.cert.public_bytes(serialization.Encoding.PEM), PEM)
    raise PkiNotFound(f"unsupported path {'/'.join(parts)!r}")


def _ca_chain(parts: list[str], body: Mapping[str, Any], store: KeyValueStore, now: dt.datetime) -> Reply:
    return _raw(("\n".join(ca.load(store).chain_pems()) + "\n").encode(), PEM)


# --- roles --------------------------------------------------------------------------------------------------


def _role_write(parts: list[str], body: Mapping[str, Any], store: KeyValueStore, now: dt.datetime) -> Reply:
    old = get_json(store, "roles/" + parts[1])
    role = Role.from_body(parts[1], body, Role.from_json(old) if old else None)
    put_json(store, "roles/" + parts[1], role.to_json())
    return 204, {}


def _role_read(parts: list[str], body: Mapping[str, Any], store: KeyValueStore, now: dt.datetime) -> Reply:
    data = issue.load_role(store, parts[1]).to_json()
    data.pop("name")
    return _data(data)


def _role_delete(parts: list[str], body: Mapping[str, Any], store: KeyValueStore, now: dt.datetime) -> Reply:
    store.delete("roles/" + parts[1])
    return 204, {}


def _list(prefix: str) -> Callable[[list[str], Mapping[str, Any], KeyValueStore, dt.datetime], Reply]:
    def run(parts: list[str], body: Mapping[str, Any], store: KeyValueStore, now: dt.datetime) -> Reply:
        keys = store.list(prefix)
        if not keys:
            raise PkiNotFound(f"nothing under {prefix.rstrip('/')}")
        if prefix == "certs/":
            keys = [k.replace("-", ":") for k in keys]
        return _data({"keys": keys})
    return run


# --- certificates -------------------------------------------------------------------------------------------


def _issue(parts: list[str], body: Mapping[str, Any], store: KeyValueStore, now: dt.datetime) -> Reply:
    return _data(issue.issue(store, parts[1], body, now))


def _sign(parts: list[str], body: Mapping[str, Any], store: KeyValueStore, now: dt.datetime) -> Reply:
    return _data(issue.sign(store, parts[1], body, now))


def _revoke(parts: list[str], body: Mapping[str, Any], store: KeyValueStore, now: dt.datetime) -> Reply:
    return _data(revocation.revoke(store, ca.load(store), body.get("serial_number"), now))


def _cert(parts: list[str], body: Mapping[str, Any], store: KeyValueStore, now: dt.datetime) -> Reply:
    which = parts[1]
    if which == "ca":
        return _data({"certificate": certbuild.pem(ca.load(store).cert)})
    if which == "ca_chain":
        return _data({"certificate": "\n".join(ca.load(store).chain_pems()),
                      "ca_chain": ca.load(store).chain_pems()})
    if which == "crl":
        crl = revocation.current_crl(store, ca.load(store), now)
        return _data({"certificate": _crl_pem(crl)})
    record = revocation.read_record(store, certbuild.parse_serial(which))
    revoked = int(record.get("revoked_at", 0))
    data: dict[str, Any] = {"certificate": record["certificate"], "revocation_time": revoked}
    if revoked:
        data["revocation_time_rfc3339"] = certbuild.utc(revoked).isoformat()
    return _data(data)


def _crl_pem(crl: bytes) -> str:
    return x509.load_der_x509_crl(crl).public_bytes(serialization.Encoding.PEM).decode().strip()


def _crl(parts: list[str], body: Mapping[str, Any], store: KeyValueStore, now: dt.datetime) -> Reply:
    issuer = ca.load(store)
    if len(parts) == 1:
        return _raw(revocation.current_crl(store, issuer, now), DER_CRL)
    if parts[1] == "pem":
        return _raw((_crl_pem(revocation.current_crl(store, issuer, now)) + "\n").encode(), PEM)
    if parts[1] == "rotate":
        return _data(revocation.rotate(store, issuer, now))
    raise PkiNotFound(f"unsupported path {'/'.join(parts)!r}")


def _tidy(parts: list[str], body: Mapping[str, Any], store: KeyValueStore, now: dt.datetime) -> Reply:
    return _data(revocation.tidy(store, _issuer_or_none(store), body, now), status=202)


def _ocsp_get(parts: list[str], body: Mapping[str, Any], store: KeyValueStore, now: dt.datetime) -> Reply:
    encoded = "/".join(parts[1:])           # base64 may contain "/"
    try:
        request = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=False)
    except (binascii.Error, ValueError):
        request = b""
    return _raw(ocsp.respond(store, _issuer_or_none(store), request, now), "application/ocsp-response")


def _ocsp_post(parts: list[str], body: Mapping[str, Any], store: KeyValueStore, now: dt.datetime) -> Reply:
    raw = body.get("_raw", b"")
    request = raw if isinstance(raw, bytes) else b""
    return _raw(ocsp.respond(store, _issuer_or_none(store), request, now), "application/ocsp-response")


_Handler = Callable[[list[str], Mapping[str, Any], KeyValueStore, dt.datetime], Reply]
# (first segment, number of segments, "write" for POST/PUT or the method) -> handler
_ROUTES: dict[tuple[str, int, str], _Handler] = {
    ("root", 2, "write"): _root, ("root", 3, "write"): _root, ("root", 1, "DELETE"): _root_delete,
    ("intermediate", 2, "write"): _intermediate, ("intermediate", 3, "write"): _intermediate,
    ("config", 2, "write"): _config_ca,
    ("ca", 1, "GET"): _ca_raw, ("ca", 2, "GET"): _ca_raw, ("ca_chain", 1, "GET"): _ca_chain,
    ("roles", 2, "write"): _role_write, ("roles", 2, "GET"): _role_read, ("roles", 2, "DELETE"): _role_delete,
    ("roles", 1, "LIST"): _list("roles/"), ("certs", 1, "LIST"): _list("certs/"),
    ("issue", 2, "write"): _issue, ("sign", 2, "write"): _sign, ("revoke", 1, "write"): _revoke,
    ("cert", 2, "GET"): _cert, ("crl", 1, "GET"): _crl, ("crl", 2, "GET"): _crl,
    ("tidy", 1, "write"): _tidy, ("ocsp", 1, "write"): _ocsp_post,
}
