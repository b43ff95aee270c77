"""Building X.509 certificates and CSRs with `cryptography`: extensions, serials, and the PEM forms Vault returns."""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes, PublicKeyTypes
from cryptography.x509.oid import NameOID

from reconcilers.vault.pki import keys
from reconcilers.vault.pki.errors import PkiError

_USAGE_ARGS = {"DigitalSignature": "digital_signature", "ContentCommitment": "content_commitment",
               "KeyEncipherment": "key_encipherment", "DataEncipherment": "data_encipherment",
               "KeyAgreement": "key_agreement", "CertSign": "key_cert_sign", "CRLSign": "crl_sign",
               "EncipherOnly": "encipher_only", "DecipherOnly": "decipher_only"}
# Usages a key of each type cannot have (RFC 8410 for ed25519, RFC 9881 for ML-DSA, RFC 5480 for ec).
_NOT_FOR = {"ec": {"KeyEncipherment", "DataEncipherment"},
            "ed25519": {"KeyEncipherment", "DataEncipherment", "KeyAgreement", "EncipherOnly", "DecipherOnly"},
            "ml-dsa-65": {"KeyEncipherment", "DataEncipherment", "KeyAgreement", "EncipherOnly", "DecipherOnly"},
            "rsa": {"KeyAgreement", "EncipherOnly", "DecipherOnly"}}


def serial_text(serial: int) -> str:
    """Vault's serial form: lowercase hex bytes joined by colons ("3a:0f:...")."""
    raw = serial.to_bytes(max(1, (serial.bit_length() + 7) // 8), "big")
    return ":".join(f"{b:02x}" for b in raw)


def parse_serial(text: str) -> int:
    """A serial from Vault's colon form, the hyphen form (in storage paths) or plain hex."""
    cleaned = text.strip().lower().replace(":", "").replace("-", "")
    if not cleaned or len(cleaned) > 64 or any(c not in "0123456789abcdef" for c in cleaned):
        raise PkiError(f"serial number {text!r} is not valid", hint='give it as Vault prints it: "3a:0f:..."')
    return int(cleaned, 16)


def storage_key(serial: int) -> str:
    """The storage path of a certificate record (hyphens: a colon is awkward in paths)."""
    return "certs/" + serial_text(serial).replace(":", "-")


def pem(cert: x509.Certificate) -> str:
    """The certificate as PEM text without the trailing newline (as Vault returns it)."""
    return cert.public_bytes(serialization.Encoding.PEM).decode().strip()


def name(common_name: str) -> x509.Name:
    """A subject with just a common name (Vault's default subject)."""
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)] if common_name else [])


def key_usage(names: Sequence[str], key_type: str, is_ca: bool) -> x509.KeyUsage:
    """The KeyUsage extension: the role's usages minus those the key type cannot have; a CA signs certs and CRLs."""
    wanted = {n for n in names if n not in _NOT_FOR[key_type]}
    if is_ca:
        wanted |= {"DigitalSignature", "CertSign", "CRLSign"}
    if not wanted:
        wanted = {"DigitalSignature"}
    args = {arg: (n in wanted) for n, arg in _USAGE_ARGS.items()}
    if not args["key_agreement"]:
        args["encipher_only"] = args["decipher_only"] = False
    return x509.KeyUsage(**args)


@dataclass(frozen=True, slots=True)
class CertSpec:
    """What goes into one certificate besides its keys."""

    subject: x509.Name
    not_before: dt.datetime
    not_after: dt.datetime
    is_ca: bool = False
    path_len: int | None = None
    dns_names: tuple[str, ...] = ()
    ip_sans: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...] = ()
    key_usage: tuple[str, ...] = ()
    ext_key_usage: tuple[x509.ObjectIdentifier, ...] = ()


def build(spec: CertSpec, public_key: CertificatePublicKeyTypes, issuer_name: x509.Name, signer: keys.PrivateKey,
          issuer_public: PublicKeyTypes | None = None) -> x509.Certificate:
    """Sign a certificate for `public_key` under `issuer_name` with `signer` (self-signed: no issuer_public)."""
    issuer_pub = keys.issuer_public(issuer_public if issuer_public is not None else public_key)
    builder = (x509.CertificateBuilder()
               .subject_name(spec.subject).issuer_name(issuer_name).public_key(public_key)
               .serial_number(x509.random_serial_number())
               .not_valid_before(spec.not_before).not_valid_after(spec.not_after)
               .add_extension(x509.BasicConstraints(ca=spec.is_ca, path_length=spec.path_len if spec.is_ca else None),
                              critical=True)
               .add_extension(key_usage(spec.key_usage, keys.type_of(public_key), spec.is_ca), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_pub), critical=False))
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in spec.dns_names]
    sans += [x509.IPAddress(ip) for ip in spec.ip_sans]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    if spec.ext_key_usage:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(spec.ext_key_usage)), critical=False)
    try:
        return builder.sign(signer, keys.hash_for(signer))
    except (ValueError, TypeError) as err:
        raise PkiError(f"the certificate could not be signed: {err}") from err


def csr(common_name: str, key: keys.PrivateKey) -> x509.CertificateSigningRequest:
    """A CSR for an intermediate CA."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(name(common_name)).add_extension(
        x509.BasicConstraints(ca=True, path_length=None), critical=True)
    return builder.sign(key, keys.hash_for(key))


def load_pem_certs(text: str) -> list[x509.Certificate]:
    """Every certificate in a PEM bundle; a clear error when there is none or one is malformed."""
    if not isinstance(text, str) or "BEGIN CERTIFICATE" not in text or len(text) > 1_000_000:
        raise PkiError("certificate: expected PEM text with at least one CERTIFICATE block")
    try:
        return x509.load_pem_x509_certificates(text.encode())
    except ValueError as err:
        raise PkiError(f"certificate: the PEM does not parse ({err})") from err


def load_csr(text: object) -> x509.CertificateSigningRequest:
    """A CSR from PEM text, its signature checked."""
    if not isinstance(text, str) or "CERTIFICATE REQUEST" not in text or len(text) > 200_000:
        raise PkiError("csr: expected PEM text with a CERTIFICATE REQUEST block")
    try:
        request = x509.load_pem_x509_csr(text.encode())
    except ValueError as err:
        raise PkiError(f"csr: the PEM does not parse ({err})") from err
    if not request.is_signature_valid:
        raise PkiError("csr: its signature is not valid", hint="sign the CSR with the key it carries")
    keys.type_of(request.public_key())
    return request


def utc(timestamp: float) -> dt.datetime:
    """A timezone-aware UTC datetime from a Unix time."""
    return dt.datetime.fromtimestamp(timestamp, dt.UTC)
