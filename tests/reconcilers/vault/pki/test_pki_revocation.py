"""Revocation, the CRL (DER and PEM, spliced from pre-encoded entries), crl/rotate, tidy, and the OCSP responder."""

from __future__ import annotations

import base64
import datetime as dt
import json
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, mldsa
from cryptography.x509 import ocsp

from reconcilers.vault.pki import ca as ca_mod
from reconcilers.vault.pki import certbuild, keys, revocation
from tests.reconcilers.vault.pki.helpers import Mount, cert

NOW = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)


def _mount(key_type: str = "ec") -> Mount:
    mount = Mount(NOW)
    mount.data("POST", "root/generate/internal", {"common_name": "ca", "key_type": key_type, "ttl": "8760h"},
               now=NOW)
    mount.call("POST", "roles/web", {"allowed_domains": "example.com", "allow_subdomains": True,
                                     "key_type": "ec"}, status=204)
    return mount


def _issue(mount: Mount, name: str = "a.example.com", ttl: str = "24h") -> dict[str, str]:
    data = mount.data("POST", "issue/web", {"common_name": name, "ttl": ttl}, now=NOW)
    return {k: v for k, v in data.items() if isinstance(v, str)}


@pytest.mark.parametrize("key_type", ["rsa", "ec", "ed25519", "ml-dsa-65"])
def test_revoked_serials_are_on_a_crl_signed_by_the_ca(key_type: str) -> None:
    """After revoking two of three certificates the CRL lists exactly those two, its signature checks against
    the CA's key, the number went up and the DER and PEM forms hold the same CRL."""
    mount = _mount(key_type)
    issued = [_issue(mount, f"h{i}.example.com") for i in range(3)]
    before = mount.crl().extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    for item in issued[:2]:
        mount.data("POST", "revoke", {"serial_number": item["serial_number"]}, now=NOW)
    crl = mount.crl()
    assert crl.is_signature_valid(keys.issuer_public(mount.ca_cert().public_key()))
    assert {r.serial_number for r in crl} == {cert(i["certificate"]).serial_number for i in issued[:2]}
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == before + 2
    assert crl.issuer == mount.ca_cert().subject
    pem = mount.call("GET", "crl/pem")["_raw"]
    assert x509.load_pem_x509_crl(pem) == crl
    record = mount.data("GET", "cert/" + issued[0]["serial_number"])
    assert record["revocation_time"] > 0 and record["certificate"] == issued[0]["certificate"]
    assert mount.data("GET", "cert/" + issued[2]["serial_number"])["revocation_time"] == 0


def test_revoking_again_keeps_one_entry_and_the_first_time() -> None:
    """A serial revoked twice is answered with its first revocation time and a warning, and the CRL holds it once."""
    mount = _mount()
    serial = _issue(mount)["serial_number"]
    first = mount.call("POST", "revoke", {"serial_number": serial}, now=NOW)
    again = mount.call("POST", "revoke", {"serial_number": serial}, now=NOW + dt.timedelta(hours=1))
    assert again["data"]["revocation_time"] == first["data"]["revocation_time"]
    assert "already revoked" in again["warnings"][0]
    assert len(mount.crl()) == 1


def test_revoke_unknown_or_malformed_serial_and_the_ca_itself() -> None:
    """Unknown serials answer 404, malformed ones 400, and the mount's own CA cannot be put on its CRL."""
    mount = _mount()
    assert "no certificate with serial" in mount.call("POST", "revoke", {"serial_number": "01:02"},
                                                      status=404)["errors"][0]
    assert "not valid" in mount.call("POST", "revoke", {"serial_number": "zz:!!"}, status=400)["errors"][0]
    ca_serial = certbuild.serial_text(mount.ca_cert().serial_number)
    mount.call("POST", "revoke", {"serial_number": ca_serial}, status=400)
    assert len(mount.crl()) == 0


def test_a_crl_with_thousands_of_entries_parses_and_openssl_accepts_it(tmp_path: Path) -> None:
    """3,000 revocations splice into a CRL that cryptography and `openssl crl -verify` both accept, entries intact."""
    mount = _mount()
    ca = mount.ca_cert()
    serials = []
    for i in range(3000):            # recorded directly: issuing 3,000 certificates would only slow the test
        serial = x509.random_serial_number()
        serials.append(serial)
        not_after = int((NOW + dt.timedelta(days=1 + i % 3)).timestamp())
        record = {"certificate": "-", "not_after": not_after}
        mount.store.put(certbuild.storage_key(serial), json.dumps(record).encode())
    assert revocation.revoke_many(mount.store, ca_mod.load(mount.store), serials[:-1], NOW) == 2999
    mount.data("POST", "revoke", {"serial_number": certbuild.serial_text(serials[-1])}, now=NOW)
    crl = mount.crl()
    assert crl.is_signature_valid(keys.issuer_public(ca.public_key()))
    assert [r.serial_number for r in crl] == serials
    assert all(r.revocation_date_utc == NOW for r in crl)
    (tmp_path / "crl.der").write_bytes(mount.call("GET", "crl")["_raw"])
    (tmp_path / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    out = subprocess.run(["openssl", "crl", "-inform", "DER", "-in", str(tmp_path / "crl.der"), "-CAfile",
                          str(tmp_path / "ca.pem"), "-noout"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "verify OK" in out.stderr + out.stdout, out.stderr


def test_crl_rotate_signs_a_new_crl_with_the_next_number() -> None:
    """crl/rotate re-signs: a new number, a new this-update, the same entries."""
    mount = _mount()
    mount.data("POST", "revoke", {"serial_number": _issue(mount)["serial_number"]}, now=NOW)
    old = mount.crl()
    later = NOW + dt.timedelta(hours=2)
    assert mount.data("GET", "crl/rotate", now=later) == {"success": True}
    new = mount.crl()
    number = x509.CRLNumber
    assert new.extensions.get_extension_for_class(number).value.crl_number == \
        old.extensions.get_extension_for_class(number).value.crl_number + 1
    assert new.last_update_utc == later and [r.serial_number for r in new] == [r.serial_number for r in old]


def test_an_expired_crl_is_signed_again_when_read() -> None:
    """A CRL past its next update is not served: reading it signs a current one."""
    mount = _mount()
    stale = mount.crl()
    got = x509.load_der_x509_crl(mount.call("GET", "crl", now=NOW + dt.timedelta(days=4))["_raw"])
    assert got.last_update_utc > stale.next_update_utc  # type: ignore[operator]


def test_tidy_forgets_expired_certificates_and_their_crl_entries() -> None:
    """tidy drops certificates expired beyond the safety buffer from the store and from the CRL, and keeps the rest."""
    mount = _mount()
    short = _issue(mount, "short.example.com", "1h")
    long = _issue(mount, "long.example.com", "240h")
    gone = _issue(mount, "gone.example.com", "1h")
    for item in (short, long):
        mount.data("POST", "revoke", {"serial_number": item["serial_number"]}, now=NOW)
    later = NOW + dt.timedelta(hours=5)
    reply = mount.call("POST", "tidy", {"tidy_cert_store": True, "tidy_revoked_certs": True,
                                        "safety_buffer": "1h"}, status=202, now=later)
    assert reply["data"] == {"removed_certificates": 2, "removed_revoked": 1}
    assert [r.serial_number for r in x509.load_der_x509_crl(mount.call("GET", "crl", now=later)["_raw"])] == \
        [cert(long["certificate"]).serial_number]
    listed = mount.data("LIST", "certs")["keys"]
    assert long["serial_number"] in listed
    assert short["serial_number"] not in listed and gone["serial_number"] not in listed


def _ocsp_request(leaf: x509.Certificate, ca: x509.Certificate, nonce: bytes | None = None) -> bytes:
    builder = ocsp.OCSPRequestBuilder().add_certificate(leaf, ca, hashes.SHA256())
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    return builder.build().public_bytes(serialization.Encoding.DER)


@pytest.mark.parametrize("key_type", ["ec", "ml-dsa-65"])
def test_ocsp_answers_good_revoked_and_unknown_signed_by_the_ca(key_type: str) -> None:
    """OCSP (POST DER and GET base64) says good, then revoked with the time, and unknown for a foreign serial;
    responses are signed by the CA and echo the nonce."""
    mount = _mount(key_type)
    ca = mount.ca_cert()
    issued = _issue(mount)
    leaf = cert(issued["certificate"])

    def ask(request: bytes, via_get: bool = False) -> ocsp.OCSPResponse:
        if via_get:
            raw = mount.call("GET", "ocsp/" + base64.b64encode(request).decode(), now=NOW)
        else:
            raw = mount.call("POST", "ocsp", {"_raw": request}, now=NOW)
        assert raw["_content_type"] == "application/ocsp-response"
        return ocsp.load_der_ocsp_response(raw["_raw"])

    good = ask(_ocsp_request(leaf, ca, b"nonce-1"))
    assert good.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
    assert good.certificate_status == ocsp.OCSPCertStatus.GOOD and good.serial_number == leaf.serial_number
    assert good.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == b"nonce-1"
    assert _signature_ok(good, ca)
    mount.data("POST", "revoke", {"serial_number": issued["serial_number"]}, now=NOW)
    revoked = ask(_ocsp_request(leaf, ca), via_get=True)
    assert revoked.certificate_status == ocsp.OCSPCertStatus.REVOKED
    assert revoked.revocation_time_utc == NOW
    other = Mount(NOW)
    other.data("POST", "root/generate/internal", {"common_name": "ca", "key_type": "ec"})
    other.call("POST", "roles/web", {"allowed_domains": "example.com", "allow_subdomains": True,
                                     "key_type": "ec"}, status=204)
    stranger = cert(other.data("POST", "issue/web", {"common_name": "x.example.com"})["certificate"])
    unknown = ask(_ocsp_request(stranger, ca))         # right issuer hashes, serial this mount never issued
    assert unknown.certificate_status == ocsp.OCSPCertStatus.UNKNOWN
    foreign = ask(_ocsp_request(stranger, other.ca_cert()))
    assert foreign.response_status == ocsp.OCSPResponseStatus.UNAUTHORIZED
    assert ask(b"\x30\x03garbage").response_status == ocsp.OCSPResponseStatus.MALFORMED_REQUEST


def _signature_ok(response: ocsp.OCSPResponse, ca: x509.Certificate) -> bool:
    """Check the response's signature with the CA key (cryptography has no OCSP verify: sign the same bytes)."""
    key = ca.public_key()
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            assert response.signature_hash_algorithm is not None
            key.verify(response.signature, response.tbs_response_bytes, ec.ECDSA(response.signature_hash_algorithm))
        elif isinstance(key, mldsa.MLDSA65PublicKey):
            key.verify(response.signature, response.tbs_response_bytes)
        else:
            return False
    except InvalidSignature:
        return False
    return True


def test_a_new_ca_after_delete_root_starts_an_empty_crl() -> None:
    """DELETE root forgets the CRL with the CA: the next CA does not sign its predecessor's revocations."""
    mount = _mount()
    mount.data("POST", "revoke", {"serial_number": _issue(mount)["serial_number"]}, now=NOW)
    assert len(mount.crl()) == 1
    mount.call("DELETE", "root", status=204)
    mount.data("POST", "root/generate/internal", {"common_name": "ca2", "key_type": "ec"}, now=NOW)
    crl = mount.crl()
    assert len(crl) == 0 and crl.issuer.rfc4514_string() == "CN=ca2"


def test_ocsp_get_with_slashes_in_the_base64_request_is_answered() -> None:
    """RFC 6960's GET puts the base64 request in the path: one holding "//" (which path splitting collapsed, so the
    request was garbled and answered 'malformed' now and then, depending on the bytes) is answered."""
    mount = _mount("ec")
    ca = mount.ca_cert()
    leaf = cert(_issue(mount)["certificate"])
    request = next(r for r in (_ocsp_request(leaf, ca, str(i).encode()) for i in range(20000))
                   if "//" in base64.b64encode(r).decode())
    raw = mount.call("GET", "ocsp/" + base64.b64encode(request).decode(), now=NOW)
    answer = ocsp.load_der_ocsp_response(raw["_raw"])
    assert answer.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
    assert answer.certificate_status == ocsp.OCSPCertStatus.GOOD
