"""The mount's issuing CA: generate a root, or generate an intermediate's key and CSR and set the signed
certificate; a root also signs other mounts' intermediate CSRs. One issuer per mount (two mounts make a chain).

Storage: `config/ca` {certificate, private_key, chain (PEMs above it)}, `config/pending` (an intermediate's key
waiting for its signed certificate). Private keys never leave except from `.../exported` calls, once.
"""

from __future__ import annotations

import datetime as dt
import re
import threading
from collections.abc import Mapping
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from reconcilers.vault.pki import certbuild, keys, revocation
from reconcilers.vault.pki.durations import parse_duration
from reconcilers.vault.pki.errors import PkiError, PkiNotConfigured
from reconcilers.vault.pki.issuer import Issuer
from reconcilers.vault.pki.storage import CA_KEY as CA_KEY
from reconcilers.vault.pki.storage import KeyValueStore, get_json, put_json

PENDING_KEY = "config/pending"
DEFAULT_CA_TTL = 10 * 365 * 86400


def load(store: KeyValueStore) -> Issuer:
    """The mount's CA, or a not-configured error saying how to make one."""
    record = get_json(store, CA_KEY)
    if record is None:
        raise PkiNotConfigured("this PKI mount has no CA yet",
                               hint="generate one (root/generate/internal) or set a signed intermediate")
    chain = tuple(x509.load_pem_x509_certificate(p.encode()) for p in record.get("chain", []))
    return Issuer(x509.load_pem_x509_certificate(record["certificate"].encode()),
                  keys.load_private(record["private_key"]), chain)


def _save(store: KeyValueStore, cert: x509.Certificate, key: keys.PrivateKey, chain: list[x509.Certificate]) -> None:
    put_json(store, CA_KEY, {"certificate": certbuild.pem(cert), "private_key": keys.private_pem(key),
                             "chain": [certbuild.pem(c) for c in chain]})


_KEY_BLOCK = re.compile(r"-----BEGIN ([A-Z ]*)PRIVATE KEY-----.*?-----END \1PRIVATE KEY-----", re.DOTALL)
# Making or replacing the mount's CA is check-then-write: two concurrent requests must not both pass the check.
_LOCK = threading.Lock()


def _refuse_if_configured(store: KeyValueStore) -> None:
    if store.get(CA_KEY) is not None:
        raise PkiError("this PKI mount already has a CA", hint="delete it first (DELETE root) or use another mount")


def _key_from(body: Mapping[str, Any]) -> keys.PrivateKey:
    key_type = str(body.get("key_type", "rsa"))
    try:
        bits = int(body.get("key_bits", 0) or 0)
    except (TypeError, ValueError):
        raise PkiError(f"key_bits: {body.get('key_bits')!r} is not a number") from None
    return keys.generate(key_type, bits)


def _common_name(body: Mapping[str, Any]) -> str:
    common_name = body.get("common_name")
    if not isinstance(common_name, str) or not common_name.strip() or len(common_name) > 64:
        raise PkiError("common_name is required (1 to 64 characters)")
    return common_name.strip()


def _path_len(body: Mapping[str, Any]) -> int | None:
    try:
        value = int(body.get("max_path_length", -1))
    except (TypeError, ValueError):
        raise PkiError(f"max_path_length: {body.get('max_path_length')!r} is not a number") from None
    return None if value < 0 else value


def generate_root(store: KeyValueStore, body: Mapping[str, Any], exported: bool, now: dt.datetime) -> dict[str, Any]:
    """root/generate/internal|exported: a self-signed CA; the key is returned only when exported."""
    with _LOCK:
        return _generate_root(store, body, exported, now)


def _generate_root(store: KeyValueStore, body: Mapping[str, Any], exported: bool, now: dt.datetime,
                   ) -> dict[str, Any]:
    _refuse_if_configured(store)
    common_name = _common_name(body)
    ttl = parse_duration(body.get("ttl", DEFAULT_CA_TTL), "ttl")
    key = _key_from(body)
    spec = certbuild.CertSpec(certbuild.name(common_name), now - dt.timedelta(seconds=30),
                              now + dt.timedelta(seconds=ttl), is_ca=True, path_len=_path_len(body))
    cert = certbuild.build(spec, key.public_key(), spec.subject, key)
    _save(store, cert, key, [])
    revocation.record_issued(store, cert)
    revocation.rebuild_crl(store, load(store), now)
    data: dict[str, Any] = {"certificate": certbuild.pem(cert), "issuing_ca": certbuild.pem(cert),
                            "serial_number": certbuild.serial_text(cert.serial_number),
                            "expiration": int(cert.not_valid_after_utc.timestamp()), "key_type": keys.type_of(key)}
    if exported:
        data |= {"private_key": keys.private_pem(key), "private_key_type": keys.type_of(key)}
    return data


def generate_intermediate(store: KeyValueStore, body: Mapping[str, Any], exported: bool) -> dict[str, Any]:
    """intermediate/generate/internal|exported: a key kept pending and a CSR for a root to sign."""
    with _LOCK:
        return _generate_intermediate(store, body, exported)


def _generate_intermediate(store: KeyValueStore, body: Mapping[str, Any], exported: bool) -> dict[str, Any]:
    _refuse_if_configured(store)
    common_name = _common_name(body)
    key = _key_from(body)
    put_json(store, PENDING_KEY, {"private_key": keys.private_pem(key), "common_name": common_name})
    request = certbuild.csr(common_name, key)
    data: dict[str, Any] = {"csr": request.public_bytes(serialization.Encoding.PEM).decode().strip(),
                            "key_type": keys.type_of(key)}
    if exported:
        data |= {"private_key": keys.private_pem(key), "private_key_type": keys.type_of(key)}
    return data


def set_signed(store: KeyValueStore, body: Mapping[str, Any], now: dt.datetime) -> dict[str, Any]:
    """intermediate/set-signed: the signed certificate (first in the bundle) must carry the pending key."""
    pending = get_json(store, PENDING_KEY)
    if pending is None:
        raise PkiError("no intermediate is pending on this mount", hint="call intermediate/generate first")
    certs = certbuild.load_pem_certs(body.get("certificate", ""))
    key = keys.load_private(pending["private_key"])
    own = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    leaf = certs[0]
    if leaf.public_key().public_bytes(serialization.Encoding.DER,
                                      serialization.PublicFormat.SubjectPublicKeyInfo) != own:
        raise PkiError("certificate: it does not carry the key of the pending intermediate",
                       hint="set the certificate signed from this mount's CSR")
    basic = leaf.extensions.get_extension_for_class(x509.BasicConstraints).value \
        if _has(leaf, x509.BasicConstraints) else None
    if basic is None or not basic.ca:
        raise PkiError("certificate: it is not a CA certificate (BasicConstraints ca=true is missing)")
    if len(certs) > 1:
        try:
            leaf.verify_directly_issued_by(certs[1])
        except (ValueError, TypeError, InvalidSignature) as err:
            raise PkiError("certificate: the second certificate in the bundle did not issue the first") from err
    _save(store, leaf, key, certs[1:])
    store.delete(PENDING_KEY)
    revocation.rebuild_crl(store, load(store), now)
    return {"imported_issuers": [certbuild.serial_text(leaf.serial_number)], "imported_keys": [],
            "mapping": {}}


def import_bundle(store: KeyValueStore, body: Mapping[str, Any], now: dt.datetime) -> dict[str, Any]:
    """config/ca: bring an existing CA (its PEM private key and certificate, then its chain) into the mount."""
    bundle = body.get("pem_bundle")
    if not isinstance(bundle, str) or "PRIVATE KEY" not in bundle:
        raise PkiError("pem_bundle: expected the CA's PEM private key followed by its certificate (and chain)")
    block = _KEY_BLOCK.search(bundle)
    if block is None:
        raise PkiError("pem_bundle: the private key block is not terminated")
    try:
        key = keys.load_private(block.group(0))
    except (ValueError, TypeError) as err:
        raise PkiError("pem_bundle: the private key does not load (unencrypted PKCS#8 or traditional PEM)") from err
    certs = certbuild.load_pem_certs(bundle)
    own = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if certs[0].public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo) != own:
        raise PkiError("pem_bundle: the first certificate does not carry the bundle's private key",
                       hint="put the CA's own certificate first, then the certificates above it")
    basic = certs[0].extensions.get_extension_for_class(x509.BasicConstraints).value \
        if _has(certs[0], x509.BasicConstraints) else None
    if basic is None or not basic.ca:
        raise PkiError("pem_bundle: the certificate is not a CA certificate")
    with _LOCK:
        _refuse_if_configured(store)
        _save(store, certs[0], key, certs[1:])
    revocation.rebuild_crl(store, load(store), now)
    return {"imported_issuers": [certbuild.serial_text(certs[0].serial_number)], "imported_keys": [keys.type_of(key)]}


def sign_intermediate(store: KeyValueStore, body: Mapping[str, Any], now: dt.datetime) -> dict[str, Any]:
    """root/sign-intermediate: this mount's CA signs a CSR into a CA certificate (any key type either way)."""
    issuer = load(store)
    request = certbuild.load_csr(body.get("csr"))
    common_name = str(body.get("common_name") or _csr_cn(request))
    ttl = parse_duration(body.get("ttl", DEFAULT_CA_TTL // 2), "ttl")
    not_after = now + dt.timedelta(seconds=ttl)
    if not_after > issuer.cert.not_valid_after_utc:
        raise PkiError(f"ttl: the certificate would outlive its issuer (until {issuer.cert.not_valid_after_utc})",
                       hint="ask for a shorter ttl")
    spec = certbuild.CertSpec(certbuild.name(common_name), now - dt.timedelta(seconds=30), not_after,
                              is_ca=True, path_len=_path_len(body))
    cert = certbuild.build(spec, request.public_key(), issuer.cert.subject, issuer.key, issuer.cert.public_key())
    revocation.record_issued(store, cert)
    return {"certificate": certbuild.pem(cert), "issuing_ca": certbuild.pem(issuer.cert),
            "ca_chain": issuer.chain_pems(), "serial_number": certbuild.serial_text(cert.serial_number),
            "expiration": int(cert.not_valid_after_utc.timestamp())}


def delete_root(store: KeyValueStore) -> None:
    """DELETE root: forget the CA, any pending intermediate and its CRL (a new CA starts a CRL of its own;
    the issued certificates stay listed)."""
    with _LOCK:
        store.delete(CA_KEY)
        store.delete(PENDING_KEY)
        for path in (revocation.ENTRIES, revocation.INDEX, revocation.NUMBER, revocation.CURRENT):
            store.delete(path)


def _has(cert: x509.Certificate, kind: type[x509.ExtensionType]) -> bool:
    try:
        cert.extensions.get_extension_for_class(kind)
    except x509.ExtensionNotFound:
        return False
    return True


def _csr_cn(request: x509.CertificateSigningRequest) -> str:
    attrs = request.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else ""
