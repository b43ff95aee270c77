"""The real `hvac` client's PKI calls against the engine, over HTTP on loopback through a stand-in router
(tests/reconcilers/vault/pki/router.py) for the vault service that will mount it."""

from __future__ import annotations

from collections.abc import Iterator

import hvac  # type: ignore[import-untyped]  # hvac ships no type hints
import hvac.exceptions  # type: ignore[import-untyped]
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509 import ocsp

from reconcilers.vault.pki import api
from tests.reconcilers.vault.pki.helpers import Mount
from tests.reconcilers.vault.pki.router import serve


@pytest.fixture(scope="module")
def client() -> Iterator[hvac.Client]:
    with serve({"pki": api.handle, "pki_int": api.handle, "pki_import": api.handle}) as (url, _stores):
        client = hvac.Client(url=url, token="stand-in-router-checks-no-token")
        client.secrets.pki.generate_root("internal", "hvac root",
                                         extra_params={"key_type": "ml-dsa-65", "ttl": "87600h"})
        yield client


def test_hvac_root_role_issue_sign_revoke_crl(client: hvac.Client) -> None:
    """read_ca_certificate, roles, generate_certificate, read/list certificates, revoke, read_crl, rotate_crl, tidy."""
    pki = client.secrets.pki
    root_pem = pki.read_ca_certificate().strip()
    root_cert = x509.load_pem_x509_certificate(root_pem.encode())
    assert root_cert.subject.rfc4514_string() == "CN=hvac root"
    with pytest.raises(hvac.exceptions.InvalidRequest, match="already has a CA"):
        pki.generate_root("internal", "second root")
    pki.create_or_update_role("web", extra_params={"allowed_domains": "example.com", "allow_subdomains": True,
                                                   "key_type": "ec", "max_ttl": "72h"})
    assert pki.read_role("web")["data"]["key_type"] == "ec"
    assert pki.list_roles()["data"]["keys"] == ["web"]
    issued = pki.generate_certificate("web", "api.example.com", extra_params={"ttl": "1h"})["data"]
    x509.load_pem_x509_certificate(issued["certificate"].encode()).verify_directly_issued_by(root_cert)
    serial = issued["serial_number"]
    assert serial in pki.list_certificates()["data"]["keys"]
    assert pki.read_certificate(serial)["data"]["certificate"] == issued["certificate"]
    revoked = pki.revoke_certificate(serial)["data"]
    assert revoked["revocation_time"] > 0
    crl = x509.load_pem_x509_crl(pki.read_crl().encode())
    assert [r.serial_number for r in crl] == [int(serial.replace(":", ""), 16)]
    assert pki.rotate_crl()["data"]["success"] is True
    assert pki.tidy(extra_params={"tidy_cert_store": True}).status_code == 202
    with pytest.raises(hvac.exceptions.InvalidRequest, match="is not allowed"):
        pki.generate_certificate("web", "evil.org")
    with pytest.raises(hvac.exceptions.InvalidPath, match="does not exist"):
        pki.generate_certificate("nope", "a.example.com")
    pki.delete_role("web")
    with pytest.raises(hvac.exceptions.InvalidPath):
        pki.read_role("web")


def test_hvac_intermediate_on_a_second_mount(client: hvac.Client) -> None:
    """generate_intermediate, sign_intermediate on the root mount, set_signed_intermediate, ca chain, sign a CSR."""
    pki = client.secrets.pki
    csr = pki.generate_intermediate("internal", "hvac int", mount_point="pki_int",
                                    extra_params={"key_type": "rsa"})["data"]["csr"]
    signed = pki.sign_intermediate(csr, "hvac int", extra_params={"ttl": "43800h"})["data"]
    pki.set_signed_intermediate(signed["certificate"] + "\n" + signed["issuing_ca"], mount_point="pki_int")
    chain = x509.load_pem_x509_certificates(pki.read_ca_certificate_chain(mount_point="pki_int").encode())
    assert [c.subject.rfc4514_string() for c in chain] == ["CN=hvac int", "CN=hvac root"]
    chain[0].verify_directly_issued_by(chain[1])
    pki.create_or_update_role("svc", extra_params={"allow_any_name": True, "key_type": "any"},
                              mount_point="pki_int")
    key = ed25519.Ed25519PrivateKey.generate()
    request = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "svc.internal")])).sign(key, None)
    pem = request.public_bytes(serialization.Encoding.PEM).decode()
    leaf = pki.sign_certificate("svc", pem, "svc.internal", mount_point="pki_int")["data"]
    x509.load_pem_x509_certificate(leaf["certificate"].encode()).verify_directly_issued_by(chain[0])


def test_hvac_submit_ca_information_imports_an_existing_ca(client: hvac.Client) -> None:
    """submit_ca_information (config/ca) takes an existing CA's key and certificate; the mount then issues
    under it; a bundle whose key does not match its certificate is refused."""
    other = Mount()
    exported = other.data("POST", "root/generate/exported", {"common_name": "brought along", "key_type": "ed25519"})
    pki = client.secrets.pki
    with pytest.raises(hvac.exceptions.InvalidRequest, match="does not carry the bundle's private key"):
        pki.submit_ca_information(ec_key_pem() + "\n" + exported["certificate"], mount_point="pki_import")
    pki.submit_ca_information(exported["certificate"] + "\n" + exported["private_key"], mount_point="pki_import")
    pki.create_or_update_role("any", extra_params={"allow_any_name": True, "key_type": "ec"},
                              mount_point="pki_import")
    leaf = pki.generate_certificate("any", "imported.example", mount_point="pki_import")["data"]
    x509.load_pem_x509_certificate(leaf["certificate"].encode()).verify_directly_issued_by(
        x509.load_pem_x509_certificate(exported["certificate"].encode()))


def ec_key_pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def test_raw_answers_over_http_crl_der_and_ocsp(client: hvac.Client) -> None:
    """The non-JSON answers (`_raw` + `_content_type`) as a client sees them over HTTP: the DER CRL, the DER
    CA certificate, and an OCSP request POSTed as application/ocsp-request."""
    pki = client.secrets.pki
    pki.create_or_update_role("raw", extra_params={"allow_any_name": True, "key_type": "ec"})
    leaf = x509.load_pem_x509_certificate(pki.generate_certificate("raw", "raw.example")["data"]["certificate"]
                                          .encode())
    base = client.url + "/v1/pki"
    crl = requests.get(base + "/crl", timeout=30)
    assert crl.headers["content-type"] == "application/pkix-crl"
    x509.load_der_x509_crl(crl.content)
    ca_cert = x509.load_der_x509_certificate(requests.get(base + "/ca", timeout=30).content)
    request = ocsp.OCSPRequestBuilder().add_certificate(leaf, ca_cert, hashes.SHA256()).build()
    answer = requests.post(base + "/ocsp", data=request.public_bytes(serialization.Encoding.DER),
                           headers={"Content-Type": "application/ocsp-request"}, timeout=30)
    assert answer.headers["content-type"] == "application/ocsp-response"
    parsed = ocsp.load_der_ocsp_response(answer.content)
    assert parsed.certificate_status == ocsp.OCSPCertStatus.GOOD and parsed.serial_number == leaf.serial_number
