"""issue/<role> (the engine makes the key) and sign/<role> (the caller's CSR): names, key and TTL checked
against the role, then a leaf certificate from the mount's CA, recorded for revocation and OCSP."""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Mapping
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from reconcilers.vault.pki import ca, certbuild, keys, revocation
from reconcilers.vault.pki.durations import parse_duration
from reconcilers.vault.pki.errors import PkiError, PkiNotFound
from reconcilers.vault.pki.issuer import Issuer
from reconcilers.vault.pki.roles import Role, names_field
from reconcilers.vault.pki.storage import KeyValueStore, get_json

DEFAULT_TTL = 30 * 86400
MAX_NAMES = 100                  # names (CN + SANs) per certificate: a bound on what one request can make us do


def load_role(store: KeyValueStore, name: str) -> Role:
    """The stored role, or a not-found error that names it."""
    data = get_json(store, "roles/" + name)
    if data is None:
        raise PkiNotFound(f"role {name!r} does not exist on this mount", hint="create it with roles/<name> first")
    return Role.from_json(data)


def issue(store: KeyValueStore, role_name: str, body: Mapping[str, Any], now: dt.datetime) -> dict[str, Any]:
    """issue/<role>: a new key of the role's type and a certificate for it; the key is returned once."""
    role = load_role(store, role_name)
    if role.key_type == "any":
        raise PkiError(f"role {role.name}: key_type is \"any\", so the engine cannot choose a key",
                       hint="use sign/<role> with a CSR, or set the role's key_type")
    key = keys.generate(role.key_type, role.key_bits)
    cert, issuer = _leaf(store, role, body, key.public_key(), (), now)
    data = _response(cert, issuer)
    data |= {"private_key": keys.private_pem(key), "private_key_type": keys.type_of(key)}
    return data


def sign(store: KeyValueStore, role_name: str, body: Mapping[str, Any], now: dt.datetime) -> dict[str, Any]:
    """sign/<role>: a certificate for the CSR's key, its names (CN and SANs) checked against the role."""
    role = load_role(store, role_name)
    request = certbuild.load_csr(body.get("csr"))
    public = request.public_key()
    kind = keys.type_of(public)
    if role.key_type != "any":
        if kind != role.key_type:
            raise PkiError(f"role {role.name}: the CSR's key is {kind}, the role requires {role.key_type}")
        if keys.bits_of(public) < role.key_bits:
            raise PkiError(f"role {role.name}: the CSR's key has {keys.bits_of(public)} bits, "
                           f"the role requires at least {role.key_bits}")
    csr_names: tuple[str, ...] = ()
    try:
        san = request.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        csr_names = tuple(san.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        pass
    merged = dict(body)
    if not merged.get("common_name"):
        cns = request.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        merged["common_name"] = str(cns[0].value) if cns else ""
    cert, issuer = _leaf(store, role, merged, public, csr_names, now)
    return _response(cert, issuer)


def _leaf(store: KeyValueStore, role: Role, body: Mapping[str, Any], public: CertificatePublicKeyTypes,
          extra_names: tuple[str, ...], now: dt.datetime) -> tuple[x509.Certificate, Issuer]:
    issuer = ca.load(store)
    if body.get("format", "pem") not in ("pem", ""):
        raise PkiError(f"format {body.get('format')!r} is not supported", hint='use "pem"')
    common_name = body.get("common_name")
    if not isinstance(common_name, str) or not common_name.strip():
        raise PkiError(f"role {role.name}: common_name is required")
    common_name = common_name.strip()
    dns: list[str] = []
    ips: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    candidates = (common_name, *names_field(body.get("alt_names"), "alt_names"), *extra_names)
    if len(candidates) > MAX_NAMES:
        raise PkiError(f"role {role.name}: {len(candidates)} names asked for, at most {MAX_NAMES} per certificate")
    for candidate in candidates:
        if _is_ip(candidate):
            ip = role.check_ip(candidate)
            if ip not in ips:
                ips.append(ip)
            continue
        role.check_dns_name(candidate)
        if candidate.lower() not in dns:
            dns.append(candidate.lower())
    for text in names_field(body.get("ip_sans"), "ip_sans"):
        ip = role.check_ip(text)
        if ip not in ips:
            ips.append(ip)
    ttl = parse_duration(body["ttl"], "ttl") if body.get("ttl") else (role.ttl or DEFAULT_TTL)
    if role.max_ttl and ttl > role.max_ttl:
        raise PkiError(f"role {role.name}: ttl {ttl} s is over the role's max_ttl of {role.max_ttl} s",
                       hint="ask for a shorter ttl")
    not_after = now + dt.timedelta(seconds=ttl)
    if not_after > issuer.cert.not_valid_after_utc:
        raise PkiError(f"role {role.name}: the certificate would outlive its CA "
                       f"(the CA expires {issuer.cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC)",
                       hint="ask for a shorter ttl")
    spec = certbuild.CertSpec(certbuild.name(common_name), now - dt.timedelta(seconds=30), not_after,
                              dns_names=tuple(dns), ip_sans=tuple(ips), key_usage=role.key_usage,
                              ext_key_usage=tuple(role.ext_key_usage_oids()))
    cert = certbuild.build(spec, public, issuer.cert.subject, issuer.key, issuer.cert.public_key())
    if not role.no_store:
        revocation.record_issued(store, cert)
    return cert, issuer


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text.strip())
    except ValueError:
        return False
    return True


def _response(cert: x509.Certificate, issuer: Issuer) -> dict[str, Any]:
    return {"certificate": certbuild.pem(cert), "issuing_ca": certbuild.pem(issuer.cert),
            "ca_chain": issuer.chain_pems(), "serial_number": certbuild.serial_text(cert.serial_number),
            "expiration": int(cert.not_valid_after_utc.timestamp())}
