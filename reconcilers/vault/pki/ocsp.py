"""The OCSP responder (RFC 6960) for certificates this mount issued: good, revoked (with its time) or unknown,
signed by the mount's CA with any of its key types (ML-DSA-65 included); a nonce in the request is echoed."""

from __future__ import annotations

import datetime as dt
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from reconcilers.vault.pki import certbuild, der, keys
from reconcilers.vault.pki.issuer import Issuer
from reconcilers.vault.pki.storage import KeyValueStore, get_json

RESPONSE_LIFETIME = dt.timedelta(hours=12)
MAX_REQUEST = 64 * 1024


def _issuer_hashes(cert: x509.Certificate, algorithm: hashes.HashAlgorithm) -> tuple[bytes, bytes]:
    """(issuerNameHash, issuerKeyHash) of a CA certificate under the request's hash algorithm."""
    name_hash = hashes.Hash(algorithm)
    name_hash.update(cert.subject.public_bytes())
    spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    _, start, end = der.read(spki, 0)
    _, bits_start, bits_end = der.read(spki, der.children(spki, start, end)[1][1])
    key_hash = hashes.Hash(algorithm)
    key_hash.update(spki[bits_start + 1:bits_end])         # the key bits, past the unused-bits byte
    return name_hash.finalize(), key_hash.finalize()


def respond(store: KeyValueStore, issuer: Issuer | None, request_der: bytes, now: dt.datetime) -> bytes:
    """A DER OCSP response to a DER OCSP request (an unsuccessful one for malformed or foreign requests)."""
    if issuer is None:
        return ocsp.OCSPResponseBuilder.build_unsuccessful(ocsp.OCSPResponseStatus.INTERNAL_ERROR).public_bytes(
            serialization.Encoding.DER)
    try:
        if len(request_der) > MAX_REQUEST:
            raise ValueError("request too large")
        request = ocsp.load_der_ocsp_request(request_der)
        algorithm = request.hash_algorithm
    except (ValueError, TypeError, x509.UnsupportedGeneralNameType):
        return _unsuccessful(ocsp.OCSPResponseStatus.MALFORMED_REQUEST)
    if (request.issuer_name_hash, request.issuer_key_hash) != _issuer_hashes(issuer.cert, algorithm):
        return _unsuccessful(ocsp.OCSPResponseStatus.UNAUTHORIZED)
    record = get_json(store, certbuild.storage_key(request.serial_number))
    builder = ocsp.OCSPResponseBuilder()
    next_update = now + RESPONSE_LIFETIME
    if record is None:
        builder = builder.add_response_by_hash(
            request.issuer_name_hash, request.issuer_key_hash, request.serial_number, algorithm,
            ocsp.OCSPCertStatus.UNKNOWN, now, next_update, None, None)
    else:
        cert = x509.load_pem_x509_certificate(record["certificate"].encode())
        revoked: Any = record.get("revoked_at")
        builder = builder.add_response(
            cert, issuer.cert, algorithm,
            ocsp.OCSPCertStatus.REVOKED if revoked is not None else ocsp.OCSPCertStatus.GOOD,
            now, next_update, certbuild.utc(int(revoked)) if revoked is not None else None, None)
    builder = builder.responder_id(ocsp.OCSPResponderEncoding.HASH, issuer.cert)
    try:
        nonce = request.extensions.get_extension_for_class(x509.OCSPNonce).value
        builder = builder.add_extension(nonce, critical=False)
    except x509.ExtensionNotFound:
        pass
    return builder.sign(issuer.key, keys.hash_for(issuer.key)).public_bytes(serialization.Encoding.DER)


def _unsuccessful(status: ocsp.OCSPResponseStatus) -> bytes:
    return ocsp.OCSPResponseBuilder.build_unsuccessful(status).public_bytes(serialization.Encoding.DER)
