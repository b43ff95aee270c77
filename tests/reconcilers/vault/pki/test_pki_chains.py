"""CAs and certificates of every key type, and chains that mix classical and ML-DSA-65 both ways: each link is
checked with `cryptography`, and the classical chains also with `openssl verify`."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from tests.reconcilers.vault.pki.helpers import Mount, cert, openssl_verify

KEY_TYPES = ["rsa", "ec", "ed25519", "ml-dsa-65"]


def _root(key_type: str) -> Mount:
    mount = Mount()
    mount.data("POST", "root/generate/internal", {"common_name": f"{key_type} root", "key_type": key_type,
                                                  "ttl": "8760h"})
    return mount


def _intermediate(root: Mount, key_type: str) -> Mount:
    inter = Mount()
    csr = inter.data("POST", "intermediate/generate/internal", {"common_name": f"{key_type} int",
                                                                "key_type": key_type})["csr"]
    signed = root.data("POST", "root/sign-intermediate", {"csr": csr, "common_name": f"{key_type} int",
                                                          "ttl": "4380h"})
    inter.data("POST", "intermediate/set-signed", {"certificate": signed["certificate"] + "\n" +
                                                   signed["issuing_ca"]})
    return inter


def _role(mount: Mount, key_type: str, **extra: object) -> None:
    mount.call("POST", "roles/web", {"allowed_domains": ["example.com"], "allow_subdomains": True,
                                     "key_type": key_type, "max_ttl": "720h", **extra}, status=204)


@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_issue_under_a_root_of_each_key_type(key_type: str, tmp_path: Path) -> None:
    """A root of each type issues a leaf of the same type whose signature, names and usages are as asked."""
    root = _root(key_type)
    _role(root, key_type, ext_key_usage=["CodeSigning"])
    issued = root.data("POST", "issue/web", {"common_name": "www.example.com", "alt_names": "api.example.com",
                                             "ip_sans": "10.0.0.7", "ttl": "24h"})
    leaf, ca = cert(issued["certificate"]), root.ca_cert()
    leaf.verify_directly_issued_by(ca)
    ca.verify_directly_issued_by(ca)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["www.example.com", "api.example.com"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.7")]
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH,
                         ExtendedKeyUsageOID.CODE_SIGNING]
    assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert (leaf.not_valid_after_utc - leaf.not_valid_before_utc).total_seconds() == 24 * 3600 + 30
    assert issued["private_key_type"] == key_type and "PRIVATE KEY" in issued["private_key"]
    assert issued["serial_number"] == ":".join(f"{b:02x}" for b in leaf.serial_number.to_bytes(
        (leaf.serial_number.bit_length() + 7) // 8, "big"))
    if key_type != "ml-dsa-65":            # Debian's OpenSSL 3.0 knows no ML-DSA: cryptography checked it above
        result = openssl_verify(tmp_path, issued["issuing_ca"], issued["certificate"])
        assert result.returncode == 0, result.stdout + result.stderr


def test_exported_root_returns_its_key_once_and_internal_never() -> None:
    """root/generate/exported hands out the private key; internal does not, and nothing reads it back."""
    exported = Mount().data("POST", "root/generate/exported", {"common_name": "r", "key_type": "ec"})
    assert "PRIVATE KEY" in exported["private_key"] and exported["private_key_type"] == "ec"
    internal = Mount()
    data = internal.data("POST", "root/generate/internal", {"common_name": "r", "key_type": "ec"})
    assert "private_key" not in data
    for path in ("cert/ca", "cert/ca_chain"):
        assert "PRIVATE" not in str(internal.call("GET", path))


@pytest.mark.parametrize(("root_type", "int_type", "leaf_type"), [
    ("rsa", "ml-dsa-65", "ec"),             # a classical root over a post-quantum intermediate
    ("ml-dsa-65", "ec", "ed25519"),         # a post-quantum root over a classical intermediate
    ("ml-dsa-65", "ml-dsa-65", "ml-dsa-65"),
])
def test_mixed_chains_verify_link_by_link(root_type: str, int_type: str, leaf_type: str) -> None:
    """root -> intermediate -> leaf across key families: every link's signature checks, ca_chain is in order."""
    root = _root(root_type)
    inter = _intermediate(root, int_type)
    _role(inter, leaf_type)
    issued = inter.data("POST", "issue/web", {"common_name": "db.example.com"})
    leaf, int_cert, root_cert = cert(issued["certificate"]), inter.ca_cert(), root.ca_cert()
    leaf.verify_directly_issued_by(int_cert)
    int_cert.verify_directly_issued_by(root_cert)
    assert [cert(p) for p in issued["ca_chain"]] == [int_cert, root_cert]
    assert int_cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    chain_text = inter.call("GET", "ca_chain")["_raw"].decode()
    assert x509.load_pem_x509_certificates(chain_text.encode()) == [int_cert, root_cert]
    with pytest.raises((InvalidSignature, TypeError, ValueError)):
        leaf.verify_directly_issued_by(root_cert)          # the chain really goes through the intermediate


def test_classical_chain_with_openssl_and_the_crl(tmp_path: Path) -> None:
    """openssl verifies rsa root -> ec intermediate -> ec leaf, and with the intermediate's CRL after revocation
    reports the leaf as revoked."""
    root = _root("rsa")
    inter = _intermediate(root, "ec")
    _role(inter, "ec")
    issued = inter.data("POST", "issue/web", {"common_name": "etcd.example.com"})
    ok = openssl_verify(tmp_path, root.data("GET", "cert/ca")["certificate"], issued["certificate"],
                        [issued["issuing_ca"]])
    assert ok.returncode == 0, ok.stdout + ok.stderr
    inter.data("POST", "revoke", {"serial_number": issued["serial_number"]})
    crl_pem = inter.data("GET", "cert/crl")["certificate"]
    root_crl = root.data("GET", "cert/crl")["certificate"]
    revoked = openssl_verify(tmp_path, root.data("GET", "cert/ca")["certificate"], issued["certificate"],
                             [issued["issuing_ca"]], crl_pem + "\n" + root_crl)
    assert revoked.returncode != 0 and "revoked" in (revoked.stdout + revoked.stderr)


def test_sign_a_csr_keeps_the_callers_key() -> None:
    """sign/<role> certifies the CSR's own key and names, and returns no private key."""
    root = _root("ec")
    _role(root, "ec")
    key = ec.generate_private_key(ec.SECP256R1())
    request = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "node1.example.com")]))
               .add_extension(x509.SubjectAlternativeName([x509.DNSName("node1.example.com")]), critical=False)
               .sign(key, hashes.SHA256()))
    pem = request.public_bytes(serialization.Encoding.PEM).decode()
    signed = root.data("POST", "sign/web", {"csr": pem, "ttl": "1h"})
    leaf = cert(signed["certificate"])
    assert "private_key" not in signed
    assert leaf.public_key() == key.public_key()
    assert leaf.subject.rfc4514_string() == "CN=node1.example.com"
